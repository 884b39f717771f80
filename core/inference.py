"""Prediction and evaluation with adapters already attached to a base."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data import open_image
from .engine import evaluate
from .model import TaskModel
from .task import EvalResult, Task


def predict_images(
    task: Task,
    model: TaskModel,
    paths: Sequence[Path],
    *,
    adapter: str | None = None,
    batch_size: int = 16,
    **options: Any,
) -> list[dict[str, Any]]:
    """Plain predictions (JSON-ready) for image files, in order; each carries its ``image`` path."""
    name = adapter or model.adapter_names[0]
    head_config = model.specs[name].head
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        images = [open_image(p) for p in chunk]
        pixels = torch.stack([model.backbone.transform(im) for im in images])
        with torch.inference_mode():
            outputs = model(pixels, adapter=name)
        preds = task.postprocess(outputs, head_config, image_sizes=[im.size for im in images], **options)
        for path, pred in zip(chunk, preds):
            results.append({"image": str(path), **pred})
    return results


def evaluate_dataset(task: Task, model: TaskModel, dataset: Any, *, adapter: str | None = None, batch_size: int = 32) -> tuple[EvalResult, float]:
    """Metrics and mean loss of an attached adapter on ``dataset``."""
    from torch.utils.data import DataLoader

    name = adapter or model.adapter_names[0]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate)
    return evaluate(task, model, loader, model.specs[name].head, adapter=name)
