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
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    home = root / "home"
    with Registry.open(home) as registry:
        for index, (name, task, options) in enumerate(adapters):
            folder = random_adapter(root / "build" / f"{name}-{index}", task, backbone=backbone, **options)
            recorded = {**(args or {}), "primary_metric": plugins.get_task(task).primary_metric} if args else None
            registry.put(folder, name=name, **({"args": recorded} if recorded else {}))
    return home


EXPORT_CHILD = '''
import re, sys
from pathlib import Path
from PIL import Image
from safetensors.torch import save_file
readme = (Path(sys.argv[1]) / "README.md").read_text()
code = re.search(r"```python\\n(.*?)```", readme, re.S).group(1)
namespace = {}
exec(code, namespace)
image = Image.open(sys.argv[2]).convert("RGB")
out = {}
for name in sys.argv[4:]:
    pixel_values = namespace["pixels"](name, [image])
    result = namespace["run"](name, pixel_values)
    result = result if isinstance(result, dict) else {"logits": result}
    out[f"{name}.pixels"] = pixel_values.contiguous()
    out.update({f"{name}.{k}": v.contiguous() for k, v in result.items()})
save_file(out, sys.argv[3])
assert not [m for m in sys.modules if m.split(".")[0] == "loradex"], "the loader imported loradex"
'''


def check_merged_export(folder: Path, model: Any, ref: str, image: Path, *, atol: float = 1e-4) -> None:
    """Run ``folder``'s README loader in a fresh interpreter (no loradex) on ``image``, for each of
    ``ref``'s heads, and assert its pixels and raw outputs equal loradex's (``model``, adapter ``ref``)."""
    import subprocess
    import sys

    import torch
    from PIL import Image
    from safetensors.torch import load_file

    adapter = model.adapters[ref]
    heads = list(zip((head.name for head in adapter.spec.head_specs()), adapter.heads, strict=True))
    out = folder.parent / f"{folder.name}-outputs.safetensors"
    child = subprocess.run([sys.executable, "-c", EXPORT_CHILD, str(folder), str(image), str(out),
                            *(name for name, _ in heads)], capture_output=True, text=True, cwd=folder.parent)
    assert child.returncode == 0, child.stderr
    exported = load_file(str(out))
    picture = Image.open(image).convert("RGB")
    for name, entry in heads:
        pixels = model.backbone.transform_at(entry.image_size)(picture)[None]
        assert torch.allclose(exported[f"{name}.pixels"], pixels, atol=1e-4), name
        ours = model(pixels, adapter=entry.key)
        ours = ours if isinstance(ours, dict) else {"logits": ours}
        for key, value in ours.items():
            assert torch.allclose(exported[f"{name}.{key}"], value, atol=atol), (name, key)
