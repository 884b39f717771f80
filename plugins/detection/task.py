"""The object detection task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradex.core.errors import ConfigError, SpecError
from loradex.core.spec import TrainSettings
from loradex.core.task import (
    EvalResult, HeadCode, HeadContext, ImageTransform, Task, TaskData, head_levels, option_help,
)

HEAD_KINDS = ("centernet", "fcos")
"""``head.kind``: the dense single-output head (TTFNet/CenterNet) or the per-level FCOS-style head."""
DEFAULT_MIN_SCORE = 0.3
"""Detections below this score are left out of ``postprocess`` (metrics use every detection)."""


@dataclass(frozen=True)
class DetectionOptions:
    """Prediction options of the detection task."""

    min_score: float = option_help("Leave out detections scoring below this (0..1).", DEFAULT_MIN_SCORE)
    max_detections: int = option_help("At most this many detections per image, best first.", 100)

    def __post_init__(self) -> None:
        if not 0 <= self.min_score <= 1:
            raise ConfigError(f"min_score must be in [0, 1], got {self.min_score}")
        if self.max_detections < 1:
            raise ConfigError(f"max_detections must be at least 1, got {self.max_detections}")


class DetectionTask(Task):
    """Object detection with a dense anchor-free head on the patch grid (boxes + class scores)."""

    name = "detection"
    description = "object detection, boxes per class (COCO JSON, YOLO txt, Pascal VOC XML, synthetic scenes)"
    formats = ("coco", "yolo", "voc", "synthetic")
    primary_metric = "map50"
    pipeline_tag = "object-detection"
    predict_options = DetectionOptions
    augmentations = ("fliplr", "flipud", "rot90")

    def synthetic_head_config(self) -> dict[str, Any]:
        """The labels (and their head settings) of the built-in synthetic scenes."""
        from ..shapes import SCENE_SHAPES
        from .targets import head_config

        return head_config(SCENE_SHAPES)

    def example_images(self) -> dict[str, Any]:
        """Two scenes of shapes."""
        from ..shapes import scene_image

        return {"shapes-scene.png": scene_image(0, 11, 224)[0], "shapes-scene-2.png": scene_image(0, 12, 224)[0]}

    def default_train(self, backbone: str) -> TrainSettings:
        """96px input (a 12x12 patch grid on tiny-vit, upsampled to 24x24 by the head), 7 epochs.

        Measured on synthetic scenes with tiny-vit: 96px reached a higher mAP@.5 than 64px and
        nearly that of 128px in half the time of 128px; 7 epochs reach mAP@.5 0.983 where 6
        reached 0.969 (107 s against 93 s on two CPU cores).
        """
        return TrainSettings(epochs=7, batch_size=16, lr=2e-3, head_lr=3e-3, warmup_ratio=0.05, image_size=96)

    def pretrained_defaults(self, backbone: Any) -> dict[str, dict[str, Any]]:
        """On learned features: r=8, alpha 16 (as classification: adapters of one base then merge rank for rank).

        Measured on deepforest's aerial trees (37 tiles, Pascal VOC) with efficientnet-lite0 at 384px:
        see bench/real_data.py for the mAP@.5 against the random-init tiny-vit.
        """
        return {"lora": {"rank": 8, "alpha": 16}}

    def load_data(self, source: str | None, *, transform: ImageTransform, image_size: int, seed: int = 0) -> TaskData:
        """COCO JSON file/folder, YOLO folder, Pascal VOC folder, or None/``synthetic[:train=N,val=N,test=N,seed=N]``."""
        from .data import load_detection_data

        return load_detection_data(source, transform=transform, image_size=image_size, seed=seed)

    def augment(self, dataset: Any, settings: TrainSettings, *, head_config: Mapping[str, Any]) -> Any:
        """Flips (``fliplr``, default 0.5; ``flipud``) and quarter turns (``rot90``), boxes moved with the pixels.

        Measured on deepforest's aerial trees (efficientnet-lite0, 384 px): the left-right flip alone
        reached mAP@.5 0.417; all eight orientations (flipud 0.5, rot90 0.5) 0.482 (bench/real_data.py).
        """
        from .targets import Augmented

        if not (settings.fliplr or settings.flipud or settings.rot90):
            return dataset
        return Augmented(dataset, fliplr=settings.fliplr, flipud=settings.flipud, rot90=settings.rot90)

    def head_defaults(self, context: HeadContext) -> dict[str, Any]:
        """On a base with finer maps (a CNN): read the stride-16 and stride-8 maps, output at stride 8."""
        return {"levels": sorted(context.levels), "upsample": 1} if context.levels else {}

    def export_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any],
                    context: HeadContext | None = None) -> HeadCode:
        """The head as torch-only code: ``kind`` ``centernet`` (the default, and every adapter from before
        ``kind`` existed) is :class:`DetectionHead` (head.py), which may set ``width``, ``depth``,
        ``upsample`` and ``levels``; ``fcos`` is :class:`LevelDetectionHead` (level_head.py), which may
        set ``width``, ``depth``, ``levels`` (the base's maps to read) and ``strides`` (its output levels)."""
        labels = head_config.get("labels")
        if not isinstance(labels, list) or not labels:
            raise SpecError("detection head needs 'labels': a non-empty list of class names")
        kind = head_config.get("kind", "centernet")
        if kind not in HEAD_KINDS:
            raise ConfigError(f"detection head kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        options: dict[str, Any] = {k: int(head_config[k]) for k in ("width", "depth") if k in head_config}
        if levels := head_levels(head_config, context):
            options["levels"] = levels
        if kind == "fcos":
            from . import level_head

            if context is None:
                raise SpecError("the fcos detection head needs the base's stride (build it through Task.head_for)")
            strides = head_config.get("strides", list(level_head.DEFAULT_STRIDES))
            if not isinstance(strides, list) or not strides or not all(isinstance(s, int) and s > 0 for s in strides):
                raise ConfigError(f"detection head strides must be a list of positive integers, got {strides!r}")
            read = [s for s, _ in levels]
            if (unmade := level_head.unreachable_stride(strides, stride=context.stride, read=read)) is not None:
                raise ConfigError(f"detection head strides: {unmade} cannot be made from this base's stride-"
                                  f"{context.stride} map (2 or 4 times finer or coarser)")
            return HeadCode(source=Path(level_head.__file__), class_name="LevelDetectionHead",
                            kwargs={"hidden_size": hidden_size, "num_labels": len(labels), "stride": context.stride,
                                    "strides": list(strides), **options})
        from . import head

        if "upsample" in head_config:
            options["upsample"] = int(head_config["upsample"])
        return HeadCode(source=Path(head.__file__), class_name="DetectionHead",
                        kwargs={"hidden_size": hidden_size, "num_labels": len(labels), **options})

    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any],
                   context: HeadContext | None = None):
        """The head :meth:`export_head` describes, built."""
        code = self.export_head(hidden_size=hidden_size, grid_size=grid_size, head_config=head_config, context=context)
        if code.class_name == "LevelDetectionHead":
            from .level_head import LevelDetectionHead

            return LevelDetectionHead(**code.kwargs)
        from .head import DetectionHead

        return DetectionHead(**code.kwargs)

    def loss(self, outputs: Any, targets: Any):
        """Focal loss on the class heat maps plus a Gaussian-weighted GIoU loss on the boxes."""
        if "heatmap" not in outputs:  # the per-level head
            from .level_loss import level_loss

            return level_loss(outputs, targets)
        from .loss import detection_loss

        return detection_loss(outputs, targets)

    def metrics(self, head_config: Mapping[str, Any]):
        """COCO mAP@[.5:.95], mAP@.5, mAP@.75, AR@100 and per-class AP through pycocotools."""
        from .metrics import DetectionMetrics

        return DetectionMetrics(head_config["labels"])

    def postprocess(
        self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]],
        min_score: float | None = None, max_detections: int = 100, **options: Any,
    ) -> list[dict[str, Any]]:
        """``{"detections": [{"label", "score", "box": [x0, y0, x1, y1]}, ...]}`` per image, in original pixels.

        ``image_sizes`` are the original (width, height) of the images; detections scoring below
        ``min_score`` (default :data:`DEFAULT_MIN_SCORE`) are left out, best first otherwise.
        """
        from .boxes import scale_boxes
        from .decode import detections

        labels = head_config["labels"]
        results = []
        for (boxes, scores, classes), (width, height) in zip(
            detections(outputs, max_detections=max_detections,
                       min_score=DEFAULT_MIN_SCORE if min_score is None else min_score), image_sizes
        ):
            pixel = scale_boxes(boxes, width, height)
            results.append({"detections": [
                {"label": labels[int(c)], "score": round(float(s), 4), "box": [round(float(v), 1) for v in box]}
                for box, s, c in zip(pixel, scores, classes)
            ]})
        return results

    def summary(self, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> str:
        """``3 objects: circle 0.91, square 0.88, circle 0.52`` (the best five named)."""
        found = prediction.get("detections", [])
        named = ", ".join(f"{d['label']} {d['score']:.2f}" for d in found[:5]) + (", ..." if len(found) > 5 else "")
        return f"{len(found)} object{'s' if len(found) != 1 else ''}" + (f": {named}" if found else "")

    def render(self, canvas, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *, colour) -> None:
        """Each detection's box in the task's colour, labelled with its class and score."""
        for det in prediction.get("detections", []):
            canvas.box(det["box"], colour=colour, label=f"{det['label']} {det['score']:.2f}")

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """PR curves per class at IoU .5 and .75, and per-class AP bars."""
        from .plots import plot_detection

        return plot_detection(result, out_dir) if result.details.get("pr50") else []

    def report(self, result: EvalResult, head_config: Mapping[str, Any]) -> str:
        """Headline metrics, then a per-class AP table."""
        headline = {k: v for k, v in result.metrics.items() if not k.startswith(("ap50_", "ap_"))}
        text = super().report(EvalResult(metrics=headline), head_config)
        ap50, ap = result.details.get("ap50", {}), result.details.get("ap", {})
        if not ap50:
            return text
        width = max(len(label) for label in ap50)
        lines = ["", f"{'class':<{width}}  AP@.5   AP@[.5:.95]"]
        lines += [f"{label:<{width}}  {ap50[label]:.4f}  {ap[label]:.4f}" for label in ap50]
        return text + "\n".join(lines) + "\n"
