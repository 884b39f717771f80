"""Classification plots: confusion matrix and per-class F1."""

from __future__ import annotations

from pathlib import Path

from loradex.core.task import EvalResult


def plot_classification(result: EvalResult, out_dir: Path) -> list[Path]:
    """Write confusion_matrix.png and per_class_f1.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = result.details["labels"]
    written = []
    matrix = np.array(result.details["confusion_matrix"])
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    written.append(out_dir / "confusion_matrix.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    f1 = result.details["per_class_f1"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(labels) + 2), 3.5))
    ax.bar(list(f1), list(f1.values()), color="tab:blue")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    written.append(out_dir / "per_class_f1.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
