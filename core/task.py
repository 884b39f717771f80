"""Task: what a task plugin provides on top of a shared backbone.

A task owns its data formats and readers, its head, loss, metrics, post-processing to plain
predictions, drawing and plots, and the default LoRA / training settings. The engine and the
registry only ever talk to a task through this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .spec import LoraSettings, TrainSettings

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import Dataset

    from .backbone import EncoderOutput

ImageTransform = Callable[["Image.Image"], "torch.Tensor"]
"""Turns one PIL image into the backbone's normalised (3, H, W) tensor."""


@dataclass
class TaskData:
    """The splits a task read, and the head configuration they imply (labels, keypoints, ...)."""

    train: Dataset | None
    val: Dataset | None
    test: Dataset | None = None
    head_config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    """One line saying what was read, e.g. ``synthetic shapes: 5 classes, 800/200/200 images``."""


@dataclass
class EvalResult:
    """Metrics of one evaluation, plus task-specific details for reports and plots."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


class MetricAccumulator(abc.ABC):
    """Collects model outputs batch by batch and computes metrics at the end."""

    @abc.abstractmethod
    def update(self, outputs: Any, targets: Any) -> None:
        """Add one batch of head outputs and the batch's targets."""

    @abc.abstractmethod
    def compute(self) -> EvalResult:
        """Metrics over everything added so far."""


class Task(abc.ABC):
    """Base class of every task plugin; subclass it and register an instance."""

    name: ClassVar[str]
    """Name used on the command line (``adapters train NAME``)."""
    description: ClassVar[str] = ""
    """One line for ``adapters tasks``."""
    formats: ClassVar[tuple[str, ...]] = ()
    """Dataset formats ``load_data`` reads, e.g. ``("imagefolder", "synthetic")``."""
    primary_metric: ClassVar[str]
    """Metric that selects the best epoch and is shown in ``adapters list``."""
    greater_is_better: ClassVar[bool] = True

    def default_lora(self) -> LoraSettings:
        """LoRA settings used when the user gives none: r=16, alpha 32 on every attention and MLP
        projection (what each built-in task measured best on the random-init presets)."""
        return LoraSettings(rank=16, alpha=32, targets="all")

    def default_train(self, backbone: str) -> TrainSettings:
        """Training settings used when the user gives none, for this backbone name."""
        return TrainSettings()

    def default_head(self) -> dict[str, Any]:
        """Head settings recorded in every new spec (so later default changes cannot alter old adapters)."""
        return {}

    @abc.abstractmethod
    def load_data(
        self, source: str | None, *, transform: ImageTransform, image_size: int, seed: int = 0
    ) -> TaskData:
        """Read a dataset: a path in one of ``formats``, or None/``synthetic`` for built-in data."""

    @abc.abstractmethod
    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any]) -> nn.Module:
        """The task head: an ``nn.Module`` mapping :class:`EncoderOutput` to raw outputs."""

    @abc.abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Scalar training loss of one batch."""

    @abc.abstractmethod
    def metrics(self, head_config: Mapping[str, Any]) -> MetricAccumulator:
        """A fresh metric accumulator."""

    @abc.abstractmethod
    def postprocess(
        self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]], **options: Any
    ) -> list[dict[str, Any]]:
        """Raw outputs of a batch → one JSON-ready prediction per image (in original pixels)."""

    def draw(self, image: Image.Image, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> Image.Image:
        """A copy of ``image`` with ``prediction`` drawn on it."""
        return image.copy()

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Write task-specific PNG plots of an evaluation into ``out_dir``; return their paths."""
        return []

    def report(self, result: EvalResult, head_config: Mapping[str, Any]) -> str:
        """A human-readable text report of an evaluation."""
        width = max((len(k) for k in result.metrics), default=0)
        return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in sorted(result.metrics.items())) + "\n"

    def collate(self, items: Sequence[tuple[torch.Tensor, Any]]) -> dict[str, Any]:
        """Batch ``(pixel_values, target)`` items; tensor targets are stacked, integers become a tensor."""
        import torch

        pixels = torch.stack([item[0] for item in items])
        targets = [item[1] for item in items]
        if targets and isinstance(targets[0], torch.Tensor):
            targets = torch.stack(targets)
        elif targets and all(isinstance(t, int) for t in targets):
            targets = torch.tensor(targets, dtype=torch.long)
        return {"pixel_values": pixels, "targets": targets}

