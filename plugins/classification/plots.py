"""Classification plots: the core's confusion matrix and per-class F1, which plugins use too."""

from loradex.core.plots import plot_classification

__all__ = ["plot_classification"]
