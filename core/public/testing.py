"""Helpers for tests of loradex and of its plugins: adapters with random weights, no training.

``random_adapter`` writes a complete adapter folder (PEFT files, head, spec) whose LoRA
factors are random rather than zero, so that an adapter changes the base's output a lot and
a test comparing two ways of running it can fail.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def builtin_head_config(task: str) -> dict[str, Any]:
    """The head configuration the built-in synthetic data of ``task`` gives (labels, keypoints, ...)."""
    from loradex.core import plugins

    task_obj = plugins.get_task(task)
    if task == "classification":
        from loradex.plugins.shapes import SHAPES

        data = {"labels": list(SHAPES)}
    elif task == "detection":
        from loradex.plugins.detection.targets import head_config
        from loradex.plugins.shapes import SCENE_SHAPES

        data = head_config(SCENE_SHAPES)
    elif task == "pose":
        from loradex.plugins.pose.schema import stick_figure_schema

        data = stick_figure_schema()
    else:
        raise ValueError(f"no built-in head configuration for task {task!r}; pass head=...")
    return {**task_obj.default_head(), **data}


def random_adapter(
    folder: str | Path,
    task: str,
    *,
    backbone: Any,
    rank: int = 8,
    alpha: float | None = None,
    targets: str = "q,v",
    image_size: int | None = None,
    head: Mapping[str, Any] | None = None,
    seed: int = 0,
    scale: float = 0.15,
    use_dora: bool = False,
) -> Path:
    """Write an adapter for ``task`` on ``backbone`` (a LoadedBackbone, left unchanged) into ``folder``.

    Every LoRA factor is drawn from N(0, ``scale``²) with ``seed``; the head is initialised by
    the task with the same seed. ``use_dora`` makes a DoRA adapter (which loradex's fast path
    hands to PEFT).
    """
    import torch

    from loradex.core import plugins
    from loradex.core.artifact import save_artifact
    from loradex.core.model import build_model
    from loradex.core.spec import AdapterSpec, LoraSettings, parse_targets

    task_obj = plugins.get_task(task)
    size = image_size or backbone.image_size
    semantic = parse_targets(targets)
    lora = LoraSettings(rank=rank, alpha=alpha if alpha is not None else 2 * rank, targets=semantic,
                        target_modules=backbone.target_modules(semantic))
    spec = AdapterSpec(task=task, backbone=backbone.ref, lora=lora,
                       head=dict(head) if head is not None else builtin_head_config(task), image_size=size)
    private = dataclasses.replace(backbone, model=copy.deepcopy(backbone.model))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        config = spec.to_lora_config()
        if use_dora:
            config.use_dora = True
        model = _build(task_obj, private, spec, config) if use_dora else build_model(task_obj, private, spec)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.encoder.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
    finally:
        torch.random.set_rng_state(state)
    return save_artifact(model.eval(), spec, Path(folder))


def _build(task: Any, backbone: Any, spec: Any, config: Any) -> Any:
    from peft import get_peft_model

    from loradex.core.model import TaskModel, new_head

    model = TaskModel(backbone, get_peft_model(backbone.model, config, adapter_name="default"))
    model.add_head("default", new_head(task, backbone, spec), spec)
    return model
