"""Adapter size on a ViT-Base-sized base: loradex artifact vs the full model it replaces.

    uv run python bench/adapter_size.py

Builds the `vit-base` preset, attaches LoRA r=16 on q and v with a 5-class head (the setting
of the hand-written reference script, which saved 2.27 MiB), saves the artifact and prints
every file's size, the weight total, and the ratio against the full fine-tuned model's
safetensors file written side by side.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    """Print sizes and ratios; exit 1 if the adapter's weights exceed 2.4 MB."""
    from loradex.core import plugins
    from loradex.core.artifact import save_artifact
    from loradex.core.model import build_model
    from loradex.core.spec import AdapterSpec, LoraSettings

    task = plugins.get_task("classification")
    backbone = plugins.resolve_backbone("vit-base").load("vit-base")
    lora = LoraSettings(rank=16, alpha=16, targets=("attn.q", "attn.v"),
                        target_modules=backbone.target_modules(("attn.q", "attn.v")))
    spec = AdapterSpec(task="classification", backbone=backbone.ref, lora=lora,
                       head={"labels": ["circle", "square", "triangle", "star", "cross"], **task.default_head()},
                       image_size=backbone.image_size)
    model = build_model(task, backbone, spec)
    lora_params, head_params = model.trainable_parameters()
    trainable = sum(p.numel() for p in lora_params + head_params)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_artifact(model, spec, Path(tmp) / "adapter")
        sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        from safetensors.torch import save_file

        full = Path(tmp) / "full_model.safetensors"
        state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
        state.update({f"head.{k}": v.contiguous() for k, v in model.heads["default"].state_dict().items()})
        save_file(state, str(full))
        full_size = full.stat().st_size
    weights = sizes["adapter_model.safetensors"] + sizes["head.safetensors"]
    print(f"trainable parameters: {trainable:,} (LoRA {sum(p.numel() for p in lora_params):,}, "
          f"head {sum(p.numel() for p in head_params):,})")
    for name, size in sizes.items():
        print(f"  {name:<28} {size:>12,} bytes")
    print(f"adapter weights (LoRA + head): {weights:,} bytes = {weights / 1e6:.3f} MB = {weights / 2**20:.3f} MiB")
    print(f"whole adapter folder:          {sum(sizes.values()):,} bytes")
    print(f"full fine-tuned model:         {full_size:,} bytes = {full_size / 1e6:.1f} MB")
    print(f"ratio full model / adapter weights: {full_size / weights:.1f}x")
    return 0 if weights <= 2_400_000 else 1


if __name__ == "__main__":
    sys.exit(main())
