"""Detection plots: the core's PR curves and per-class AP, which detection-as-text uses too."""

from loradex.core.plots import plot_pr_curves as plot_detection

__all__ = ["plot_detection"]
