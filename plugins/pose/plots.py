"""Pose drawing and plots: skeletons on a canvas, per-keypoint error bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loradex.core.task import EvalResult


def render_skeleton(canvas, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *,
                    colour: tuple[int, int, int], min_score: float = 0.0) -> None:
    """Bones of the skeleton and a dot per keypoint, in the task's ``colour``.

    ``prediction["keypoints"]`` is a list of ``{"name", "x", "y", "score"}`` in image pixels;
    keypoints scoring below ``min_score`` are left out.
    """
    points = prediction.get("keypoints", [])
    shown = [p["score"] >= min_score for p in points]
    for a, b in head_config.get("skeleton", []):
        if a < len(points) and b < len(points) and shown[a] and shown[b]:
            canvas.line((points[a]["x"], points[a]["y"]), (points[b]["x"], points[b]["y"]), colour=colour)
    for j, p in enumerate(points):
        if shown[j]:
            canvas.point(p["x"], p["y"], colour=colour)


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
