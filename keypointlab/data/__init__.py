"""Data: image reading, HPatches-format sequences, homographic pairs, augmentation."""
