"""The ``brightness`` task: one number per image, trained with a LoRA on the shared base."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from loradex.core.data import ImageDataset, TensorListDataset, parse_synthetic, require_folder
from loradex.core.errors import DataError
from loradex.core.spec import LoraSettings, TrainSettings
from loradex.core.task import EvalResult, MetricAccumulator, Task, TaskData

SYNTHETIC = {"train": 256, "val": 64, "test": 0, "seed": 0}


def measured_brightness(path: str | Path) -> float:
    """Mean of the grey-level pixels of an image, in 0..1."""
    with Image.open(path) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float32).mean() / 255.0)


def _synthetic_image(seed: int, index: int, size: int) -> tuple[Image.Image, float]:
    rng = np.random.default_rng([seed, index])
    level = rng.uniform(0.05, 0.95)
    pixels = np.clip(rng.normal(level, 0.15, size=(size, size, 3)), 0, 1)
    image = Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
    return image, float(np.asarray(image.convert("L"), dtype=np.float32).mean() / 255.0)


class BrightnessHead(nn.Module):
    """Mean patch token → one number."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, features) -> torch.Tensor:
        """(B,) brightness estimates."""
        return self.out(self.norm(features.patches.flatten(1, 2).mean(1))).squeeze(-1)


class RegressionMetrics(MetricAccumulator):
    """Mean absolute error and R² through scikit-learn."""

    def __init__(self) -> None:
        self.pred: list[np.ndarray] = []
        self.true: list[np.ndarray] = []

    def update(self, outputs: Any, targets: Any) -> None:
        """Add a batch."""
        self.pred.append(outputs.detach().float().cpu().numpy())
        self.true.append(targets.detach().float().cpu().numpy())

    def compute(self) -> EvalResult:
        """MAE and R²."""
        from sklearn.metrics import mean_absolute_error, r2_score

        pred, true = np.concatenate(self.pred), np.concatenate(self.true)
        return EvalResult(metrics={"mae": float(mean_absolute_error(true, pred)), "r2": float(r2_score(true, pred))})


class BrightnessTask(Task):
    """Regress the mean brightness of an image."""

    name = "brightness"
    description = "mean image brightness regression (example third-party plugin)"
    formats = ("synthetic", "folder+labels.csv")
    primary_metric = "mae"
    greater_is_better = False

    def default_lora(self) -> LoraSettings:
        """A small LoRA is plenty."""
        return LoraSettings(rank=4, alpha=8, targets=("attn.q", "attn.v"))

    def default_train(self, backbone: str) -> TrainSettings:
        """A few quick epochs."""
        return TrainSettings(epochs=3, batch_size=32, lr=1e-3, head_lr=5e-3)

    def load_data(self, source, *, transform, image_size, seed=0) -> TaskData:
        """Synthetic noise images, or ``FOLDER/labels.csv`` rows ``file,brightness``."""
        options = parse_synthetic(source, SYNTHETIC)
        if options is not None:
            def split(offset: int, count: int):
                pairs = [_synthetic_image(options["seed"], offset + i, image_size) for i in range(count)]
                return TensorListDataset([transform(p[0]) for p in pairs], [torch.tensor(p[1]) for p in pairs])

            return TaskData(train=split(0, options["train"]), val=split(10**6, options["val"]),
                            test=split(2 * 10**6, options["test"]) if options["test"] else None,
                            description=f"synthetic brightness: {options['train']}/{options['val']} images")
        root = require_folder(source)
        table = root / "labels.csv"
        if not table.is_file():
            raise DataError(f"{table}: missing (rows: file,brightness)")
        paths, values = [], []
        with table.open(newline="") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                try:
                    paths.append(root / row[0])
                    values.append(torch.tensor(float(row[1])))
                except (IndexError, ValueError):
                    raise DataError(f"{table}: line {line} is not 'file,brightness'") from None
        cut = max(1, len(paths) // 5)
        return TaskData(train=ImageDataset(paths[cut:], values[cut:], transform),
                        val=ImageDataset(paths[:cut], values[:cut], transform),
                        description=f"{table}: {len(paths)} images")

    def build_head(self, *, hidden_size, grid_size, head_config) -> nn.Module:
        """A linear head on the mean patch token."""
        return BrightnessHead(hidden_size)

    def loss(self, outputs, targets) -> torch.Tensor:
        """Mean squared error."""
        return nn.functional.mse_loss(outputs.float(), targets.float())

    def metrics(self, head_config) -> MetricAccumulator:
        """MAE and R²."""
        return RegressionMetrics()

    def postprocess(self, outputs, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]], **options):
        """``{"brightness": value}`` per image."""
        return [{"brightness": round(float(v), 4)} for v in outputs.detach().float().cpu()]
