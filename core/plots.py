"""Plots every task can use: a figure saved and closed in one step, confusion matrices, bars.

``with figure(path) as ax:`` gives a matplotlib Axes on the Agg backend (no display needed) and
writes ``path`` when the block ends, also if it raises — plugin authors need no matplotlib
boilerplate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .task import EvalResult


@contextlib.contextmanager
def figure(path: Path, *, size: tuple[float, float] = (5.0, 3.5), dpi: int = 100) -> Iterator[Any]:
    """A matplotlib Axes whose figure is written to ``path`` (PNG) and closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_confusion_matrix(labels: list[str], matrix: list[list[int]], path: Path) -> Path:
    """``path``: the confusion matrix (rows: true class, columns: predicted)."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(4.0, 0.6 * len(labels) + 2)
    with figure(path, size=(side, side)) as ax:
        ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(ax=ax, colorbar=False,
                                                                             xticks_rotation=45)
        ax.set_title("Confusion matrix")
    return path


def plot_bars(values: Mapping[str, float], path: Path, *, title: str, ylabel: str, ylim: tuple[float, float] | None = None
              ) -> Path:
    """``path``: one bar per name."""
    with figure(path, size=(max(4.0, 0.5 * len(values) + 2), 3.5)) as ax:
        ax.bar(list(values), list(values.values()), color="tab:blue")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
    return path


def plot_classification(result: EvalResult, out_dir: Path) -> list[Path]:
    """confusion_matrix.png and per_class_f1.png of a :class:`~loradex.core.metrics.ClassificationMetrics` result."""
    return [plot_confusion_matrix(result.details["labels"], result.details["confusion_matrix"],
                                  out_dir / "confusion_matrix.png"),
            plot_bars(result.details["per_class_f1"], out_dir / "per_class_f1.png", title="Per-class F1",
                      ylabel="F1", ylim=(0, 1.05))]


def plot_pr_curves(result: EvalResult, out_dir: Path) -> list[Path]:
    """Write pr_curves.png (per class, IoU .5 and .75) and per_class_ap.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    details = result.details
    recall = details["recall"]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "pr50", "IoU 0.5"), (axes[1], "pr75", "IoU 0.75")):
        for name, curve in details[key].items():
            ap = sum(curve) / len(curve)
            ax.plot(recall, curve, label=f"{name} ({ap:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall")
        ax.set_title(f"Precision-recall, {title}")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("precision")
    fig.tight_layout()
    written.append(out_dir / "pr_curves.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    names = list(details["ap50"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [details["ap50"][n] for n in names], width=0.4, label="AP@.5")
    ax.bar([x + 0.2 for x in xs], [details["ap"][n] for n in names], width=0.4, label="AP@[.5:.95]")
    ax.set_xticks(list(xs), names, rotation=45)
    ax.set_ylim(0, 1.05)
    ax.set_title("Per-class AP")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "per_class_ap.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
