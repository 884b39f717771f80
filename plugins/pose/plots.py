"""Pose drawing and plots: skeletons on images, per-keypoint error bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loradex.core.task import EvalResult

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255))


def draw_skeleton(image, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *, min_score: float = 0.0):
    """A copy of ``image`` with the skeleton's bones and one coloured dot per keypoint.

    ``prediction["keypoints"]`` is a list of ``{"name", "x", "y", "score"}`` in image pixels;
    keypoints scoring below ``min_score`` are left out.
    """
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    points = prediction.get("keypoints", [])
    shown = [p["score"] >= min_score for p in points]
    r = max(2, round(max(out.size) / 80))
    for a, b in head_config.get("skeleton", []):
        if a < len(points) and b < len(points) and shown[a] and shown[b]:
            draw.line([(points[a]["x"], points[a]["y"]), (points[b]["x"], points[b]["y"])],
                      fill=(255, 255, 255), width=max(1, r // 2))
    for j, p in enumerate(points):
        if shown[j]:
            x, y = p["x"], p["y"]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=PALETTE[j % len(PALETTE)], outline=(0, 0, 0))
    return out


def plot_pose(result: EvalResult, out_dir: Path) -> list[Path]:
    """Write per_keypoint_error.png (mean pixel error and PCK@0.1 per keypoint); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result.details["per_keypoint"]
    names = list(per)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(7.0, 0.9 * len(names) + 3), 3.8))
    left.bar(names, [per[n]["mean_pixel_error"] for n in names], color="tab:red")
    left.set_ylabel("pixels")
    left.set_title("Mean pixel error per keypoint")
    right.bar(names, [per[n]["pck@0.1"] for n in names], color="tab:blue")
    right.set_ylim(0, 1.05)
    right.set_title("PCK@0.1 per keypoint")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    path = out_dir / "per_keypoint_error.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
