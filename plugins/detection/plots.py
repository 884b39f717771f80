"""Detection drawings and plots: boxes on images, PR curves, per-class AP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loradex.core.task import EvalResult

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


MIN_DRAWN_SIDE = 256
"""Images smaller than this are enlarged (by a whole factor, at most 4) so labels stay legible."""


def draw_detections(image, detections: Sequence[Mapping[str, Any]], labels: Sequence[str]):
    """A copy of ``image`` with boxes (pixel xyxy), labels and scores drawn, one colour per class.

    Small images (shorter side under :data:`MIN_DRAWN_SIDE`) are enlarged by a whole factor
    first, boxes with them, so that the label text does not hide the objects.
    """
    from PIL import Image, ImageDraw

    out = image.convert("RGB")
    factor = max(1, min(4, -(-MIN_DRAWN_SIDE // max(1, min(out.size)))))
    out = out.resize((out.width * factor, out.height * factor), Image.NEAREST) if factor > 1 else out.copy()
    draw = ImageDraw.Draw(out)
    line = max(1, round(min(out.size) / 150))
    for det in detections:
        label = det["label"]
        colour = PALETTE[(list(labels).index(label) if label in labels else len(label)) % len(PALETTE)]
        x0, y0, x1, y1 = (v * factor for v in det["box"])
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=colour, width=line)
        text = f"{label} {det['score']:.2f}"
        box = draw.textbbox((x0, y0), text)
        top = y0 - (box[3] - box[1]) - 2 if y0 - (box[3] - box[1]) - 2 >= 0 else y0
        box = draw.textbbox((x0, top), text)
        draw.rectangle(box, fill=colour)
        draw.text((x0, top), text, fill=(0, 0, 0))
    return out


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
