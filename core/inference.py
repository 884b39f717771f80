"""Evaluation of an attached adapter, and drawings of a freshly trained one on validation images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data import open_image
from .engine import evaluate
from .model import TaskModel
from .task import EvalResult, Task


def predict_pil(task: Task, model: TaskModel, images: Sequence[Any], *, adapter: str | None = None,
                **options: Any) -> list[dict[str, Any]]:
    """Plain predictions for PIL images (one batch), in their original pixels."""
    name = adapter or model.adapter_names[0]
    spec = model.specs[name]
    transform = model.backbone.transform_at(spec.image_size)
    pixels = torch.stack([transform(im) for im in images])
    parsed = task.parse_options(options)
    with torch.inference_mode():
        if task.generates:
            outputs = task.generate(model.runner(name), model.backbone, pixels, spec.head, **parsed)
        else:
            outputs = model(pixels, adapter=name)
    return task.postprocess(outputs, spec.head, image_sizes=[im.size for im in images], **parsed)


def evaluate_dataset(task: Task, model: Any, dataset: Any, *, head_config: dict[str, Any], adapter: str | None = None,
                     batch_size: int = 32, workers: int | None = None) -> tuple[EvalResult, float]:
    """Metrics and mean loss on ``dataset`` of head ``adapter`` of ``model`` (a MultiTaskModel or TaskModel).

    ``workers``: data-loading processes (None fits the machine, see ``default_workers``).
    """
    from .data.loading import make_loader

    loader = make_loader(dataset, batch_size=batch_size, collate=task.collate, workers=workers,
                         device=getattr(model, "device", None))
    return evaluate(task, model, loader, head_config, adapter=adapter)


def dataset_image(dataset: Any, index: int):
    """The original PIL image of item ``index``, if the dataset keeps one (None otherwise)."""
    images = getattr(dataset, "images", None)
    if images is not None:
        return images[index]
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return open_image(paths[index])
    return None


def draw_samples(task: Task, model: TaskModel, dataset: Any, out_dir: Path, *, count: int = 8,
                 adapter: str | None = None) -> list[Path]:
    """Draw predictions on the first ``count`` images of ``dataset`` into ``out_dir``."""
    images = [im for im in (dataset_image(dataset, i) for i in range(min(count, len(dataset)))) if im is not None]
    if not images:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    head_config = model.specs[adapter or model.adapter_names[0]].head
    written = []
    for index, (image, prediction) in enumerate(zip(images, predict_pil(task, model, images, adapter=adapter))):
        path = out_dir / f"val_{index}.png"
        task.draw(image, prediction, head_config).save(path)
        written.append(path)
        if isinstance(prediction.get("text"), str):  # a generative task: keep what it wrote beside the drawing
            path.with_suffix(".txt").write_text(prediction["text"] + "\n", encoding="utf-8")
    return written
