"""The image classification task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradex.core.errors import ConfigError, SpecError
from loradex.core.spec import TrainSettings
from loradex.core.task import EvalResult, HeadCode, ImageTransform, Task, TaskData, option_help


@dataclass(frozen=True)
class ClassificationOptions:
    """Prediction options of the classification task."""

    top_k: int = option_help("How many labels (best first) to return per image.", 5)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")


class ClassificationTask(Task):
    """Single-label image classification with top-k predictions."""

    name = "classification"
    description = "single-label image classification (ImageFolder, synthetic shapes)"
    formats = ("imagefolder", "synthetic")
    primary_metric = "f1_macro"
    pipeline_tag = "image-classification"
    predict_options = ClassificationOptions

    def synthetic_head_config(self) -> dict[str, Any]:
        """The labels of the built-in synthetic shapes."""
        from ..shapes import SHAPES

        return {"labels": list(SHAPES)}

    def default_train(self, backbone: str) -> TrainSettings:
        """Settings measured to reach macro-F1 >= 0.9 on synthetic shapes in minutes on a CPU."""
        return TrainSettings(epochs=8, batch_size=32, lr=2e-3, head_lr=3e-3, warmup_ratio=0.05, patience=3)

    def pretrained_defaults(self, backbone: Any) -> dict[str, dict[str, Any]]:
        """On learned features: r=8, 4 epochs, patience 2, and the base's own pooled vector (``cls``).

        Measured on Fashion-MNIST (10k train, 64px) with efficientnet-lite0 on 2 CPU cores: 90.8% test
        accuracy in 5 minutes, the best validation epoch the third (bench/real_data.py).
        """
        return {"lora": {"rank": 8, "alpha": 16}, "train": {"epochs": 4, "patience": 2},
                "head": {"pooling": "cls"}}

    def default_head(self) -> dict[str, Any]:
        """Max pooling over patch tokens (see ClassificationHead for the alternatives)."""
        return {"pooling": "max"}

    def load_data(self, source: str | None, *, transform: ImageTransform, image_size: int, seed: int = 0) -> TaskData:
        """ImageFolder root, or None/``synthetic[:train=N,val=N,test=N,seed=N]``."""
        from .data import load_classification_data

        return load_classification_data(source, transform=transform, image_size=image_size, seed=seed)

    def export_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any]) -> HeadCode:
        """:class:`ClassificationHead` (head.py, torch only) with one output per label."""
        from . import head

        labels = head_config.get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            raise SpecError("classification head needs 'labels': a list of at least 2 names")
        pooling = head_config.get("pooling", "max")
        if pooling not in head.POOLINGS:
            raise SpecError(f"classification head pooling must be one of {', '.join(head.POOLINGS)}, got {pooling!r}")
        return HeadCode(source=Path(head.__file__), class_name="ClassificationHead",
                        kwargs={"hidden_size": hidden_size, "num_labels": len(labels), "pooling": pooling})

    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any]):
        """A linear head over max-pooled patch tokens (``head_config["pooling"]`` overrides), one output per label."""
        from .head import ClassificationHead

        return ClassificationHead(**self.export_head(hidden_size=hidden_size, grid_size=grid_size,
                                                     head_config=head_config).kwargs)

    def merge_heads(self, states, weights, head_config):
        """A head whose logits are exactly the weighted average of the inputs' logits.

        ``LayerNorm(γᵢ, βᵢ)`` then ``Linear(Wᵢ, bᵢ)`` gives ``Wᵢ(γᵢ ⊙ n(x) + βᵢ) + bᵢ``, linear in n(x):
        the average is one head with ``γ = 1, β = 0, W = Σ wᵢ·Wᵢ·diag(γᵢ), b = Σ wᵢ·(Wᵢβᵢ + bᵢ)``.
        Averaging γ and W separately instead would mix the heads' scales.
        """
        import torch

        weight = sum(w * s["classifier.weight"].float() * s["norm.weight"].float() for s, w in zip(states, weights))
        bias = sum(w * (s["classifier.weight"].float() @ s["norm.bias"].float() + s["classifier.bias"].float())
                   for s, w in zip(states, weights))
        first = states[0]
        return {"norm.weight": torch.ones_like(first["norm.weight"]), "norm.bias": torch.zeros_like(first["norm.bias"]),
                "classifier.weight": weight.to(first["classifier.weight"].dtype),
                "classifier.bias": bias.to(first["classifier.bias"].dtype)}

    def loss(self, outputs: Any, targets: Any):
        """Cross-entropy on the logits."""
        from .loss import classification_loss

        return classification_loss(outputs, targets)

    def metrics(self, head_config: Mapping[str, Any]):
        """Accuracy, macro P/R/F1, top-k, per-class F1, confusion matrix."""
        from .metrics import ClassificationMetrics

        return ClassificationMetrics(head_config["labels"])

    def postprocess(
        self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]], top_k: int = 5, **options: Any
    ) -> list[dict[str, Any]]:
        """``{"label", "score", "top_k": [{"label", "score"}, ...]}`` per image."""
        labels = head_config["labels"]
        probs = outputs.detach().float().softmax(-1).cpu()
        k = max(1, min(top_k, len(labels)))
        scores, indices = probs.topk(k, dim=-1)
        results = []
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist()):
            ranked = [{"label": labels[i], "score": round(s, 6)} for s, i in zip(row_scores, row_indices)]
            results.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
        return results

    def summary(self, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> str:
        """``circle 0.98 (square 0.01, star 0.01)``: the label, its score, and the runners-up."""
        rest = ", ".join(f"{p['label']} {p['score']:.2f}" for p in prediction.get("top_k", [])[1:3])
        return f"{prediction['label']} {prediction['score']:.2f}" + (f" ({rest})" if rest else "")

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Confusion matrix and per-class F1 bar chart."""
        from .plots import plot_classification

        return plot_classification(result, out_dir) if result.details else []

    def report(self, result: EvalResult, head_config: Mapping[str, Any]) -> str:
        """Headline metrics, then per-class F1 and support, then the confusion matrix."""
        text = super().report(result, head_config)
        if not result.details:
            return text
        labels = result.details["labels"]
        width = max(len(label) for label in labels)
        lines = ["", f"{'class':<{width}}  f1      support"]
        for label in labels:
            lines.append(f"{label:<{width}}  {result.details['per_class_f1'][label]:.4f}  {result.details['support'][label]}")
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        for label, row in zip(labels, result.details["confusion_matrix"]):
            lines.append(f"{label:<{width}}  " + " ".join(f"{v:5d}" for v in row))
        return text + "\n".join(lines) + "\n"
