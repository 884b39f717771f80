"""Classification metrics: the core's label metrics, which plugins use too."""

from loradex.core.metrics import ClassificationMetrics, top_k_values

__all__ = ["ClassificationMetrics", "top_k_values"]
