"""Build small adapter folders for registry tests without training anything."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from loradex.core.spec import AdapterSpec, BackboneRef, LoraSettings

FINGERPRINT = "sha256:" + "ab" * 32


def make_spec(*, task: str = "classification", fingerprint: str = FINGERPRINT, labels: tuple[str, ...] = ("a", "b")) -> AdapterSpec:
    """A valid spec for the tiny-vit preset."""
    return AdapterSpec(
        task=task,
        backbone=BackboneRef(name="tiny-vit", fingerprint=fingerprint, architecture="vit"),
        lora=LoraSettings(rank=4, alpha=8, targets=("attn.q", "attn.v"),
                          target_modules=r"^encoder\.layer\.\d+\.attention\.attention\.(query|value)$"),
        head={"labels": list(labels)},
    )


def peft_config(*, target_modules: Any = ("query", "value"), base: str = "tiny-vit", rank: int = 4) -> dict[str, Any]:
    """A minimal PEFT adapter_config.json."""
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": list(target_modules) if not isinstance(target_modules, str) else target_modules,
        "bias": "none",
        "task_type": None,
    }


def write_peft_folder(folder: Path, *, seed: int = 0, head: bool = True, config: Mapping[str, Any] | None = None) -> Path:
    """A plain PEFT folder: adapter_config.json + adapter_model.safetensors (+ head.safetensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (folder / "adapter_config.json").write_text(json.dumps(dict(config or peft_config())))
    width = 192  # tiny-vit's hidden size: imports are checked against the base
    lora = {
        f"base_model.model.encoder.layer.{i}.attention.attention.{m}.lora_{ab}.weight": rng.standard_normal(
            (4, width) if ab == "A" else (width, 4)
        ).astype(np.float32)
        for i in range(2) for m in ("query", "value") for ab in ("A", "B")
    }
    save_file(lora, str(folder / "adapter_model.safetensors"))
    if head:  # a classification head for labels ("a", "b")
        save_file({"norm.weight": np.ones(width, np.float32), "norm.bias": np.zeros(width, np.float32),
                   "classifier.weight": rng.standard_normal((2, width)).astype(np.float32),
                   "classifier.bias": np.zeros(2, np.float32)}, str(folder / "head.safetensors"))
    return folder


def make_adapter(
    folder: Path,
    *,
    seed: int = 0,
    task: str = "classification",
    metrics: Mapping[str, float] | None = None,
    fingerprint: str = FINGERPRINT,
) -> Path:
    """A complete loradex adapter folder (all six files), different weights for each seed."""
    write_peft_folder(folder, seed=seed)
    (folder / "loradex.json").write_text(make_spec(task=task, fingerprint=fingerprint).to_json())
    data = dict(metrics if metrics is not None else {"f1_macro": 0.5 + seed / 1000, "accuracy": 0.6})
    (folder / "metrics.json").write_text(json.dumps(data))
    (folder / "README.md").write_text(f"# adapter {seed}\n")
    return folder


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except the SQLite files, with contents (to prove 'unchanged')."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.name.startswith("index.db") and path.name != "lock":
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def cli_group():
    """The real ``adapters`` root group (it takes ``--home``)."""
    from loradex.registry.cli import cli

    return cli


def random_shelf(root: Path, adapters: list[tuple[str, str, dict[str, Any]]], *,
                 args: Mapping[str, Any] | None = None) -> Path:
    """A registry at ``root/home`` holding one random tiny-vit adapter per (name, task, random_adapter options).

    A name listed twice gets a second version. ``args`` are recorded with every version, as training would.
    """
    from loradex.core import plugins
    from loradex.registry.store import Registry
    from loradex.testing import random_adapter

    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    home = root / "home"
    with Registry.open(home) as registry:
        for index, (name, task, options) in enumerate(adapters):
            folder = random_adapter(root / "build" / f"{name}-{index}", task, backbone=backbone, **options)
            recorded = {**(args or {}), "primary_metric": plugins.get_task(task).primary_metric} if args else None
            registry.put(folder, name=name, **({"args": recorded} if recorded else {}))
    return home
