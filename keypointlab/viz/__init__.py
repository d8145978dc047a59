"""Matplotlib figures, returned (never shown) so callers decide where they go."""

from keypointlab.viz.plots import matches_figure, mma_figure, save_figure, sequence_bars_figure

__all__ = ["matches_figure", "mma_figure", "save_figure", "sequence_bars_figure"]
