"""Files: the HDF5 layout of features, matches and labels, and checkpoint files.

The bottom layer beside :mod:`keypointlab.geometry`: it imports nothing else of the
package, so data sources, extractors, models and the trainer can all read and write these
files without importing each other.
"""
