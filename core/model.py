"""TaskModel: a backbone with one or more LoRA adapters attached, and one head per adapter."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backbone import LoadedBackbone
from .spec import AdapterSpec
from .task import Task


class TaskModel(nn.Module):
    """The frozen base wrapped by PEFT, plus a head per adapter name.

    With one adapter this is what training builds; with several (``add_adapter``) one base
    serves many tasks, and a mixed batch runs through it once with ``adapter_names``.
    """

    def __init__(self, backbone: LoadedBackbone, encoder: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        self.specs: dict[str, AdapterSpec] = {}

    def train(self, mode: bool = True) -> TaskModel:
        """Train the LoRA and heads; the frozen base's batch-norm layers stay in eval mode.

        In train mode a BatchNorm normalises with batch statistics and overwrites its running
        mean and variance: that would change the shared base (and its fingerprint) under every
        other adapter, and give a CNN base different features from those it was trained with.
        """
        super().train(mode)
        if mode:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def adapter_names(self) -> list[str]:
        """Names of the attached adapters, in attachment order."""
        return list(self.heads.keys())

    def add_head(self, name: str, head: nn.Module, spec: AdapterSpec) -> None:
        """Attach the head of adapter ``name``."""
        self.heads[name] = head
        self.specs[name] = spec

    def forward(self, pixel_values: torch.Tensor, adapter: str | None = None) -> Any:
        """Run one adapter (the only one if ``adapter`` is None) and its head."""
        name = adapter or self._only()
        if len(self.heads) > 1 and self.encoder.active_adapter != name:
            # without inference_mode PEFT would make the adapter trainable again
            self.encoder.set_adapter(name, inference_mode=not self.training)
        features = self.backbone.encode(self.encoder, pixel_values)
        return self.heads[name](features)

    def runner(self, adapter: str | None = None) -> Any:
        """The base with adapter ``adapter`` (the only one if None) on: call it, or ``.generate`` with it.

        What a task that owns its forward pass (``Task.step``) runs.
        """
        name = adapter or self._only()
        if len(self.heads) > 1 and self.encoder.active_adapter != name:
            self.encoder.set_adapter(name, inference_mode=not self.training)
        return self.encoder

    def _only(self) -> str:
        if len(self.heads) != 1:
            raise ValueError(f"model holds adapters {self.adapter_names}; name the one to run")
        return next(iter(self.heads))

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(LoRA parameters, head parameters) that require gradients."""
        lora = [p for n, p in self.encoder.named_parameters() if p.requires_grad]
        head = [p for p in self.heads.parameters() if p.requires_grad]
        return lora, head


def build_model(task: Task, backbone: LoadedBackbone, spec: AdapterSpec, *, adapter_name: str = "default") -> TaskModel:
    """A fresh trainable model: new LoRA weights on ``backbone`` and a new head from ``spec``."""
    from peft import get_peft_model

    encoder = get_peft_model(backbone.model, spec.to_lora_config(), adapter_name=adapter_name)
    model = TaskModel(backbone, encoder)
    model.add_head(adapter_name, new_head(task, backbone, spec), spec)
    return model


def new_head(task: Task, backbone: LoadedBackbone, spec: AdapterSpec) -> nn.Module:
    """The task's head for this backbone's hidden size and the spec's patch grid."""
    return task.head_for(backbone, head_config=spec.head, image_size=spec.image_size)
