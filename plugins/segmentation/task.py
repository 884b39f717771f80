"""The ``segmentation`` task: a class for every pixel, from the shared base's patch grid.

Written against the public ``loradex`` API only (tests/test_segmentation.py checks it imports no
``loradex.core`` or ``loradex.registry``): the head (head.py, torch only), the data (data.py) and
this file are all a plugin author needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loradex import (
    ConfigError, EvalResult, HeadCode, HeadContext, LoraSettings, head_levels, MetricAccumulator, Task, TaskData, TrainSettings, colour_for,
    option_help,
    plot_bars, plot_confusion_matrix,
)

from .data import IGNORE, load_segmentation_data, shapes_scene


@dataclass(frozen=True)
class SegmentationOptions:
    """Prediction options of the segmentation task."""

    min_area: float = option_help("Leave out of `coverage` classes covering less than this share of the image.", 0.0)
    alpha: float = option_help("Opacity of the mask drawn over the image (0..1).", 0.5)

    def __post_init__(self) -> None:
        if not 0 <= self.min_area < 1:
            raise ConfigError(f"min_area must be in [0, 1), got {self.min_area}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")


class SegmentationMetrics(MetricAccumulator):
    """A pixel confusion matrix (ignored pixels left out): mIoU, pixel accuracy, per-class IoU."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)

    def update(self, outputs: Any, targets: Any) -> None:
        """Add logits (B, C, h, w) against masks (B, H, W) (logits resized to the masks)."""
        predicted = resized_logits(outputs, targets.shape[-2:]).argmax(1).cpu().numpy().ravel()
        truth = targets.cpu().numpy().ravel()
        keep = truth != IGNORE
        n = len(self.labels)
        self.matrix += np.bincount(truth[keep] * n + predicted[keep], minlength=n * n).reshape(n, n)

    def compute(self) -> EvalResult:
        """``miou`` over the classes present (in truth or prediction), ``pixel_accuracy``, ``iou_<class>``."""
        m = self.matrix
        union = m.sum(0) + m.sum(1) - np.diag(m)
        iou = {label: float(m[i, i] / union[i]) for i, label in enumerate(self.labels) if union[i] > 0}
        metrics = {"miou": float(np.mean(list(iou.values()))) if iou else 0.0,
                   "pixel_accuracy": float(np.trace(m) / m.sum()) if m.sum() else 0.0,
                   **{f"iou_{label}": value for label, value in iou.items()}}
        return EvalResult(metrics=metrics, details={"labels": self.labels, "iou": iou, "confusion_matrix": m.tolist()})


def resized_logits(logits: Any, size: Sequence[int]) -> Any:
    """(B, C, h, w) logits bilinearly resized to ``size`` (H, W)."""
    import torch.nn.functional as F

    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def run_lengths(mask: np.ndarray) -> list[list[int]]:
    """A label map as ``[[class, run], ...]`` in row-major order (JSON-friendly, and small for masks)."""
    flat = mask.ravel()
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    runs = np.diff(np.r_[starts, flat.size])
    return [[int(flat[s]), int(r)] for s, r in zip(starts, runs)]


def from_run_lengths(runs: Sequence[Sequence[int]], size: Sequence[int]) -> np.ndarray:
    """The label map (H, W) of :func:`run_lengths` output; ``size`` is (width, height)."""
    values = np.repeat([r[0] for r in runs], [r[1] for r in runs]).astype(np.int64)
    return values.reshape(int(size[1]), int(size[0]))


class SegmentationTask(Task):
    """Semantic segmentation: one class per pixel, drawn as a colour overlay."""

    name = "segmentation"
    description = "semantic segmentation: a class per pixel (images/ + masks/, VOC, synthetic shapes)"
    formats = ("masks", "voc", "synthetic")
    primary_metric = "miou"
    pipeline_tag = "image-segmentation"
    predict_options = SegmentationOptions

    def default_lora(self) -> LoraSettings:
        """Rank 16 on every block layer: telling a circle's pixels from a square's takes the whole shape."""
        return LoraSettings(rank=16, alpha=32, targets=("all",))

    def default_train(self, backbone: str) -> TrainSettings:
        """Measured on the synthetic shapes with tiny-vit: 24 epochs, mIoU 0.67 in under 3 minutes on 2 cores."""
        return TrainSettings(epochs=24, batch_size=16, lr=5e-3, head_lr=5e-3, warmup_ratio=0.05, patience=4)

    def pretrained_defaults(self, backbone: Any) -> dict[str, dict[str, Any]]:
        """Learned features: rank 8, LoRA lr 1e-3 (the head keeps 5e-3), 10 epochs.

        Measured with efficientnet-lite0 on bench/real_data.py's Fashion scenes (128 px, 1,000 images):
        val mIoU 0.473 at LoRA lr 1e-3 against 0.388 at the random-init default 5e-3, which disturbs
        the learned features more than it adapts them (a frozen-base probe reached 0.432).
        """
        return {"lora": {"rank": 8, "alpha": 16}, "train": {"epochs": 10, "patience": 3, "lr": 1e-3}}

    def synthetic_head_config(self) -> dict[str, Any]:
        """The classes of the synthetic shapes."""
        from .data import SHAPES

        return {"labels": list(SHAPES)}

    def example_images(self) -> dict[str, Any]:
        """A scene of shapes."""
        return {"segmentation-scene.png": shapes_scene(0, 3, 224)[0]}

    def default_head(self) -> dict[str, Any]:
        """The decoder's width and number of 2x stages, recorded in every spec."""
        return {"channels": 32, "upsample": 2}  # 64 cost 10 s an epoch for less mIoU in the same 3 minutes

    def load_data(self, source: str | None, *, transform, image_size: int, seed: int = 0) -> TaskData:
        """Synthetic shapes, an ``images/`` + ``masks/`` folder, or a VOC folder (see data.py)."""
        return load_segmentation_data(source, transform=transform, image_size=image_size, seed=seed)

    def head_defaults(self, context: HeadContext) -> dict[str, Any]:
        """Read every finer map the base offers (a CNN's stride-8 and stride-16 stages), coarse to fine.

        Recorded in the spec: an adapter from before levels existed has none and keeps its single-map head.
        """
        return {"levels": sorted(context.levels)} if context.levels else {}

    def _kwargs(self, hidden_size: int, head_config: Mapping[str, Any], context: HeadContext | None) -> dict[str, Any]:
        labels = head_config.get("labels")
        if not labels:
            raise ConfigError("a segmentation head needs its class names (head_config['labels'])")
        levels = head_levels(head_config, context)
        return {"hidden_size": hidden_size, "num_classes": len(labels), "channels": int(head_config.get("channels", 64)),
                "upsample": int(head_config.get("upsample", 2)), **({"levels": levels} if levels else {})}

    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any],
                   context: HeadContext | None = None):
        """A per-pixel decoder at 2^upsample times the finest map it reads (finer than the input is refused)."""
        from .head import SegmentationHead

        kwargs = self._kwargs(hidden_size, head_config, context)
        if context is not None:
            finest = min([context.stride, *(s for s, _ in kwargs.get("levels", ()))])
            if finest < 2 ** kwargs["upsample"]:
                raise ConfigError(f"upsample {kwargs['upsample']} makes maps finer than the input: the finest map "
                                  f"has {finest} pixels per cell (use upsample <= {finest.bit_length() - 1})")
        return SegmentationHead(**kwargs)

    def export_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any],
                    context: HeadContext | None = None) -> HeadCode:
        """:class:`SegmentationHead` (head.py imports torch only)."""
        from . import head

        return HeadCode(source=Path(head.__file__), class_name="SegmentationHead",
                        kwargs=self._kwargs(hidden_size, head_config, context))

    def loss(self, outputs: Any, targets: Any):
        """Pixel cross-entropy at the masks' size; ignored pixels (255) do not count."""
        import torch.nn.functional as F

        return F.cross_entropy(resized_logits(outputs, targets.shape[-2:]), targets.long(), ignore_index=IGNORE)

    def metrics(self, head_config: Mapping[str, Any]) -> SegmentationMetrics:
        """mIoU, pixel accuracy, per-class IoU, the pixel confusion matrix."""
        return SegmentationMetrics(head_config["labels"])

    def postprocess(self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]],
                    min_area: float = 0.0, alpha: float = 0.5, **options: Any) -> list[dict[str, Any]]:
        """Per image: the label map at the image's size (``mask``: run lengths), each class's coverage."""
        labels = head_config["labels"]
        results = []
        for logits, (width, height) in zip(outputs, image_sizes):
            mask = resized_logits(logits[None], (height, width))[0].argmax(0).cpu().numpy()
            counts = np.bincount(mask.ravel(), minlength=len(labels)) / mask.size
            coverage = {labels[i]: round(float(counts[i]), 4) for i in np.argsort(-counts)
                        if counts[i] > 0 and counts[i] >= min_area}
            results.append({"size": [int(width), int(height)], "labels": list(labels), "coverage": coverage,
                            "mask": run_lengths(mask), "alpha": alpha})
        return results

    def summary(self, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> str:
        """``circle 12% square 5%``: the classes other than the first (background), by area."""
        shown = [(k, v) for k, v in prediction["coverage"].items() if k != prediction["labels"][0]][:4]
        return " ".join(f"{k} {v:.0%}" for k, v in shown) or f"{prediction['labels'][0]} only"

    def render(self, canvas: Any, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *, colour) -> None:
        """Each class but the first (background) as a translucent colour over the image."""
        mask = from_run_lengths(prediction["mask"], prediction["size"])
        colours = {i: colour_for(i - 1) for i in range(1, len(prediction["labels"]))}
        canvas.mask(mask, colours=colours, alpha=float(prediction.get("alpha", 0.5)))

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """per_class_iou.png and the pixel confusion matrix."""
        if not result.details:
            return []
        return [plot_bars(result.details["iou"], out_dir / "per_class_iou.png", title="Per-class IoU", ylabel="IoU",
                          ylim=(0, 1.05)),
                plot_confusion_matrix(result.details["labels"], result.details["confusion_matrix"],
                                      out_dir / "confusion_matrix.png")]
