"""Files: the HDF5 layout of features, matches and labels, checkpoint files, and writing
outputs safely (:mod:`keypointlab.io.outputs`: checked first, locked, renamed when whole).

The bottom layer beside :mod:`keypointlab.geometry`: it imports nothing else of the
package but :mod:`keypointlab.errors`, so data sources, extractors, models and the trainer
can all read and write these files without importing each other.
"""
