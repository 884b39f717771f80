"""The pose (keypoint) task: top-down, one person per sample image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loradex.core.spec import TrainSettings
from loradex.core.task import EvalResult, HeadCode, HeadContext, ImageTransform, Task, TaskData, head_levels

HEATMAP_WEIGHT = 1.0
"""Weight of the heatmap cross-entropy next to the L1 coordinate loss."""
HEATMAP_SIGMA = 1.0
"""Standard deviation, in heatmap cells, of the Gaussian the heatmaps are trained towards."""


class PoseTask(Task):
    """Keypoints of one person per image: heatmaps from the patch grid, soft-argmax coordinates.

    Head configuration: ``keypoints`` (names), ``skeleton`` (index pairs), ``flip_pairs``
    (left/right index pairs), optional ``sigmas`` (OKS), ``channels`` and ``upsample`` (decoder).
    """

    name = "pose"
    description = "keypoints / pose, top-down heatmaps (COCO keypoints JSON, synthetic stick figures)"
    formats = ("coco-keypoints", "synthetic")
    primary_metric = "pck@0.1"
    pipeline_tag = "keypoint-detection"
    augmentations = ("fliplr",)

    def synthetic_head_config(self) -> dict[str, Any]:
        """The keypoints and skeleton of the built-in stick figures."""
        from .schema import stick_figure_schema

        return stick_figure_schema()

    def example_images(self) -> dict[str, Any]:
        """A stick figure."""
        from .synthetic import stick_figure

        return {"stick-figure.png": stick_figure(0, 5)[0]}

    def default_train(self, backbone: str) -> TrainSettings:
        """6 epochs at the backbone's own resolution (64px on tiny-vit).

        Measured on the default synthetic split (2000 train) with tiny-vit on 2 shared CPU cores:
        PCK@0.1 0.95 on val in about 1m45s on an idle machine (0.92 after 4 epochs).
        """
        return TrainSettings(epochs=6, batch_size=32, lr=2e-3, head_lr=3e-3, warmup_ratio=0.05)

    def load_data(self, source: str | None, *, transform: ImageTransform, image_size: int, seed: int = 0) -> TaskData:
        """None/``synthetic[:train=N,val=N,test=N,seed=N]``, a COCO keypoints JSON, or a folder of them."""
        from .data import load_pose_data

        return load_pose_data(source, transform=transform, seed=seed)

    def augment(self, dataset: Any, settings: TrainSettings, *, head_config: Mapping[str, Any]) -> Any:
        """Left-right flips with probability ``fliplr`` (left/right keypoints swapped, by the data's
        ``flip_pairs``); up-down flips and quarter turns have no keypoint rule here and are not applied."""
        from .targets import FlipDataset

        pairs = head_config.get("flip_pairs")
        return FlipDataset(dataset, pairs, p=settings.fliplr) if pairs and settings.fliplr else dataset

    def head_defaults(self, context: HeadContext) -> dict[str, Any]:
        """On a base with finer maps (a CNN): fuse the stride-16 and stride-8 maps, heatmaps at stride 4."""
        return {"levels": sorted(context.levels), "upsample": 1} if context.levels else {}

    def export_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any],
                    context: HeadContext | None = None) -> HeadCode:
        """:class:`KeypointHead` (head.py, torch only), one heatmap per keypoint."""
        from . import head
        from .schema import check_schema

        names, _, _ = check_schema(head_config)
        levels = head_levels(head_config, context)
        return HeadCode(source=Path(head.__file__), class_name="KeypointHead",
                        kwargs={"hidden_size": hidden_size, "num_keypoints": len(names),
                                "channels": int(head_config.get("channels", 64)),
                                "upsample": int(head_config.get("upsample", 2)), **({"levels": levels} if levels else {})})

    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any],
                   context: HeadContext | None = None):
        """A heatmap decoder with one map per keypoint at 4x the patch grid (``upsample`` 2x stages, default 2),
        reading the finer maps ``levels`` names first."""
        from .head import KeypointHead

        return KeypointHead(**self.export_head(hidden_size=hidden_size, grid_size=grid_size,
                                               head_config=head_config, context=context).kwargs)

    def loss(self, outputs: Any, targets: Any):
        """L1 on the soft-argmax coordinates plus heatmap cross-entropy to a Gaussian."""
        from .loss import keypoint_loss

        return keypoint_loss(outputs, targets, heatmap_weight=HEATMAP_WEIGHT, sigma=HEATMAP_SIGMA)

    def metrics(self, head_config: Mapping[str, Any]):
        """PCK@0.05, PCK@0.1, mean pixel error, OKS AP, per-keypoint error."""
        from .metrics import PoseMetrics

        return PoseMetrics(head_config)

    def collate(self, items):
        """Stack pixels and each target field (targets are dicts of tensors)."""
        from .targets import collate_pose

        return collate_pose(items)

    def postprocess(
        self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]], **options: Any
    ) -> list[dict[str, Any]]:
        """``{"keypoints": [{"name", "x", "y", "score"}], "score"}`` per image, x/y in original pixels."""
        names = head_config["keypoints"]
        coords = outputs["coords"].detach().float().cpu()
        scores = outputs["scores"].detach().float().cpu()
        results = []
        for i, (width, height) in enumerate(image_sizes):
            points = [
                {"name": name, "x": round(float(coords[i, j, 0]) * width, 2),
                 "y": round(float(coords[i, j, 1]) * height, 2), "score": round(float(scores[i, j]), 4)}
                for j, name in enumerate(names)
            ]
            results.append({"keypoints": points, "score": round(float(scores[i].mean()), 4)})
        return results

    def summary(self, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> str:
        """``5 keypoints, score 0.87``."""
        return f"{len(prediction.get('keypoints', []))} keypoints, score {prediction.get('score', 0):.2f}"

    def render(self, canvas, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *, colour) -> None:
        """The skeleton's bones in the task colour and one dot per keypoint in its own colour."""
        from .plots import render_skeleton

        render_skeleton(canvas, prediction, head_config, colour=colour)

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """per_keypoint_error.png (loss curves are drawn by the run itself)."""
        from .plots import plot_pose

        return plot_pose(result, out_dir) if result.details else []

    def report(self, result: EvalResult, head_config: Mapping[str, Any]) -> str:
        """Headline metrics, then mean pixel error and PCK@0.1 per keypoint."""
        text = super().report(result, head_config)
        per = result.details.get("per_keypoint")
        if not per:
            return text
        width = max(len(n) for n in per)
        lines = ["", f"{'keypoint':<{width}}  error_px  pck@0.1  count"]
        for name, row in per.items():
            lines.append(f"{name:<{width}}  {row['mean_pixel_error']:8.2f}  {row['pck@0.1']:7.4f}  {row['count']}")
        return text + "\n".join(lines) + "\n"
