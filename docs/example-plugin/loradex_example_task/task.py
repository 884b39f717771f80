"""The ``brightness`` task: one number per image, built on loradex's helpers (``labels_csv``, ``figure``)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from loradex import (
    EvalResult, ImageDataset, MetricAccumulator, Task, TaskData, TensorListDataset, TrainSettings,
    figure, labels_csv, parse_synthetic, require_folder, synthetic_splits,
)

SYNTHETIC = {"train": 256, "val": 64, "test": 0, "seed": 0}


def measured_brightness(image) -> float:
    """Mean grey level of an image (a PIL image or a path), in 0..1."""
    image = image if isinstance(image, Image.Image) else Image.open(image)
    return float(np.asarray(image.convert("L"), dtype=np.float32).mean() / 255.0)


def synthetic_image(seed: int, index: int, size: int) -> Image.Image:
    """Noise around a random grey level: a pure function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    pixels = np.clip(rng.normal(rng.uniform(0.05, 0.95), 0.15, size=(size, size, 3)), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), "RGB")


class BrightnessHead(nn.Module):
    """Mean patch token → one number."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.norm, self.out = nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 1)

    def forward(self, features) -> torch.Tensor:
        """(B,) brightness estimates."""
        return self.out(self.norm(features.patches.flatten(1, 2).mean(1))).squeeze(-1)


class RegressionMetrics(MetricAccumulator):
    """MAE and R², keeping the pairs for the plot."""

    def __init__(self) -> None:
        self.pred, self.true = [], []

    def update(self, outputs, targets) -> None:
        """Add a batch of estimates and true values."""
        self.pred += outputs.detach().float().cpu().tolist()
        self.true += targets.detach().float().cpu().tolist()

    def compute(self) -> EvalResult:
        """MAE and R² (scikit-learn), with the pairs in ``details``."""
        from sklearn.metrics import mean_absolute_error, r2_score

        metrics = {"mae": float(mean_absolute_error(self.true, self.pred)),
                   "r2": float(r2_score(self.true, self.pred)) if len(self.true) > 1 else 0.0}
        return EvalResult(metrics=metrics, details={"pred": self.pred, "true": self.true})


class BrightnessTask(Task):
    """Regress the mean brightness of an image."""

    name = "brightness"
    description = "mean image brightness regression (example third-party plugin)"
    formats = ("synthetic", "folder with labels.csv")
    primary_metric = "mae"
    greater_is_better = False

    def default_train(self, backbone: str) -> TrainSettings:
        """A few quick epochs."""
        return TrainSettings(epochs=3, batch_size=32, lr=1e-3, head_lr=5e-3)

    def load_data(self, source, *, transform, image_size, seed=0) -> TaskData:
        """Synthetic noise images, or a folder whose ``labels.csv`` has ``file,brightness`` rows."""
        options = parse_synthetic(source, SYNTHETIC)
        if options is not None:
            def split(offset: int, count: int) -> TensorListDataset:
                images = [synthetic_image(options["seed"], offset + i, image_size) for i in range(count)]
                values = [torch.tensor(measured_brightness(im)) for im in images]
                return TensorListDataset([transform(im) for im in images], values, images)

            train, val, test = synthetic_splits(split, train=options["train"], val=options["val"], test=options["test"])
            return TaskData(train=train, val=val, test=test, description=f"synthetic brightness: {options}")
        read = labels_csv(require_folder(source), column="brightness", seed=seed)
        sets = {k: ImageDataset([p for p, _ in v], [torch.tensor(float(b)) for _, b in v], transform)
                for k, v in read.splits.items()}
        return TaskData(train=sets.get("train"), val=sets.get("val"), test=sets.get("test"),
                        description=f"{source} ({read.how}): {read.counts} train/val/test images")

    def build_head(self, *, hidden_size, grid_size, head_config) -> nn.Module:
        """A linear head on the mean patch token."""
        return BrightnessHead(hidden_size)

    def loss(self, outputs, targets) -> torch.Tensor:
        """Mean squared error."""
        return nn.functional.mse_loss(outputs.float(), targets.float())

    def metrics(self, head_config) -> MetricAccumulator:
        """MAE and R²."""
        return RegressionMetrics()

    def postprocess(self, outputs, head_config, *, image_sizes, **options) -> list[dict]:
        """``{"brightness": value}`` per image."""
        return [{"brightness": round(float(v), 4)} for v in outputs.detach().float().cpu()]

    def summary(self, prediction, head_config) -> str:
        """``brightness 0.42``."""
        return f"brightness {prediction['brightness']:.2f}"

    def render(self, canvas, prediction, head_config, *, colour) -> None:
        """A bar along the bottom edge, as long as the image is bright."""
        width, height = canvas.size
        canvas.box((0, height * 0.92, max(1.0, min(max(prediction["brightness"], 0), 1) * width), height), colour=colour)

    def plot(self, result, head_config, out_dir) -> list:
        """brightness.png: estimated against true brightness."""
        with figure(out_dir / "brightness.png", size=(4, 4)) as ax:
            ax.scatter(result.details["true"], result.details["pred"], s=8)
            ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
            ax.set(xlabel="true", ylabel="estimated", title=f"MAE {result.metrics['mae']:.3f}")
        return [out_dir / "brightness.png"]

    def report(self, result, head_config) -> str:
        """The metrics, then the largest errors."""
        errors = sorted(zip(result.details.get("true", []), result.details.get("pred", [])),
                        key=lambda tp: -abs(tp[0] - tp[1]))[:3]
        worst = "\n".join(f"  true {t:.3f}  estimated {p:.3f}" for t, p in errors)
        return super().report(result, head_config) + ("largest errors:\n" + worst + "\n" if worst else "")
