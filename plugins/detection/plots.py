"""Detection plots: PR curves and per-class AP (boxes are drawn by DetectionTask.render)."""

from __future__ import annotations

from pathlib import Path

from loradex.core.task import EvalResult


def plot_detection(result: EvalResult, out_dir: Path) -> list[Path]:
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
