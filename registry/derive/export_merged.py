"""``adapters export REF DIR --merged``: a standalone transformers folder, LoRA merged into the base.

The folder holds the merged base (``config.json`` + ``model.safetensors``, what
``AutoModel.from_pretrained`` reads), its image processor, every head's weights and the
torch-only source of its class, ``loradex_export.json`` saying how the heads read the base's
tokens, and a README whose loader snippet uses torch, safetensors and transformers alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from loradex.core import plugins
from loradex.core.artifact import head_file, load_weights, native_names
from loradex.core.errors import RegistryError
from loradex.core.scratch import scratch_folder

from loradex.registry.store.registry import check_destination, staged_folder

EXPORT_FILE = "loradex_export.json"

LOADER = '''import importlib.util, json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

folder = Path("{folder}")
export = json.loads((folder / "loradex_export.json").read_text())
base = AutoModel.from_pretrained(folder).eval()          # the LoRA is merged into these weights
# the resize and normalisation the heads were trained on (PIL's resampling, as in training); named,
# since a timm config.json holds timm's own eval transform too
processor = AutoImageProcessor.from_pretrained(folder, image_processor_filename="preprocessor_config.json",
                                               backend="pil")

heads = {{}}
for h in export["heads"]:
    spec = importlib.util.spec_from_file_location(h["module"], folder / h["source"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)                      # torch-only code of the head
    head = getattr(module, h["class"])(**h["kwargs"])
    head.load_state_dict(load_file(folder / h["weights"]))
    heads[h["name"]] = head.eval()


class Features:
    """What every head reads: a pooled vector `cls` (B, D), the feature grid `patches` (B, rows, cols, D)
    and, on a CNN, its finer maps `levels` by stride."""

    def __init__(self, out, size):
        hidden, encoding = out.last_hidden_state, export["encoding"]
        if hidden.ndim == 4:                             # a CNN's feature map (B, D, rows, cols)
            self.patches = hidden.permute(0, 2, 3, 1)
        else:                                            # tokens (B, prefix + rows * cols, D)
            grid, prefix = size // export["patch_size"], export["num_prefix_tokens"]
            self.patches = hidden[:, prefix:prefix + grid * grid].reshape(len(hidden), grid, grid, -1)
        pooled = getattr(out, "pooler_output", None) if encoding["pooled"] == "pooler_output" else None
        if pooled is not None and pooled.ndim == 2:
            self.cls = pooled
        else:
            self.cls = hidden[:, 0] if encoding["pooled"] == "first_token" else self.patches.flatten(1, 2).mean(1)
        # a CNN's finer stage maps by stride (B, rows, cols, C), for heads that read several scales
        self.levels = {{int(s): out.hidden_states[i].permute(0, 2, 3, 1) for s, i in encoding.get("levels", {{}}).items()}}


def pixels(name, images):
    """PIL images -> the pixel_values head `name` reads (its own image size)."""
    size = next(h for h in export["heads"] if h["name"] == name)["image_size"]
    return processor(images=images, size={{"height": size, "width": size}}, return_tensors="pt")["pixel_values"]


def run(name, pixel_values):
    """Raw outputs of head `name` for pixel_values from `pixels(name, images)`."""
    size = pixel_values.shape[-1]
    resized = export["encoding"]["interpolate_kwarg"] and size != export["base_image_size"]
    with torch.no_grad():
        options = {{"interpolate_pos_encoding": True}} if resized else {{}}
        if export["encoding"].get("levels"):
            options["output_hidden_states"] = True
        out = base(pixel_values=pixel_values, **options)
        return heads[name](Features(out, size))
'''


def export_merged(record: Any, source: Path, dest: Path) -> Path:
    """Write ``record`` (its files in ``source``) as a merged standalone folder at ``dest`` (new or empty)."""
    from peft import PeftModel

    dest = Path(dest)
    check_destination(dest)  # before the base loads: a wrong destination fails at once
    spec = record.spec
    base_ref = spec.backbone
    backbone = plugins.resolve_backbone(base_ref.name).load(base_ref.name, revision=base_ref.revision)
    if backbone.ref.fingerprint != base_ref.fingerprint and base_ref.fingerprint:
        raise RegistryError(f"{record.ref} was trained on another {base_ref.name!r} than the one loaded "
                            "(fingerprints differ); cannot merge it into these weights")
    codes = []
    for head in spec.head_specs():
        task = plugins.get_task(head.task, made_by=spec.plugins.get(head.task))
        if task.generates:  # it answers with the base's own language-model head: the merged model is all
            continue
        code = task.export_for(backbone, head_config=head.config, image_size=head.image_size)
        if code is None:
            raise RegistryError(f"task {head.task!r} cannot export its head as standalone code; "
                                "export the adapter without --merged and load it with loradex")
        codes.append((head, code))
    with staged_folder(dest) as staging:
        with scratch_folder("native") as scratch:
            lora = native_names(source, backbone, Path(scratch))
            merged = PeftModel.from_pretrained(backbone.model, str(lora)).merge_and_unload()
        merged.save_pretrained(staging, safe_serialization=True)
        if codes:
            backbone.save_image_processor(staging)
        else:  # a generative base (Florence-2) keeps its whole processor: tokenizer and image part
            backbone.processor.save_pretrained(staging)
        heads = []
        (staging / "heads").mkdir()
        for head, code in codes:
            module = f"{head.task}_{Path(code.source).stem}"  # detection_head, detection_level_head: two kinds, two files
            shutil.copyfile(code.source, staging / "heads" / f"{module}.py")
            weights = f"head.{head.name}.safetensors"
            shutil.copyfile(source / head_file(spec, head), staging / weights)
            load_weights(staging / weights)  # a readable safetensors file, checked once more
            heads.append({"name": head.name, "task": head.task, "module": module, "source": f"heads/{module}.py",
                          "class": code.class_name, "kwargs": code.kwargs, "weights": weights,
                          "image_size": head.image_size, "config": head.config})
        manifest = {"adapter": record.ref, "base": {"name": base_ref.name, "revision": base_ref.revision,
                                                    "fingerprint": base_ref.fingerprint},
                    "base_image_size": backbone.image_size, "patch_size": backbone.patch_size,
                    "num_prefix_tokens": backbone.num_prefix_tokens, "encoding": backbone.export_encoding(),
                    "heads": heads}
        (staging / EXPORT_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(readme(record, heads, dest), encoding="utf-8")
    return dest


def readme(record: Any, heads: list[dict[str, Any]], dest: Path) -> str:
    """The export's README: what it is and the loader snippet (transformers, safetensors, torch only)."""
    listing = "\n".join(f"- `{h['name']}` ({h['task']}, {h['image_size']} px): `{h['class']}` in `{h['source']}`, "
                        f"weights `{h['weights']}`" for h in heads)
    return (f"---\nlibrary_name: transformers\ntags:\n- loradex\n- merged\n---\n\n"
            f"# {record.ref}, merged\n\n"
            f"The LoRA of loradex adapter `{record.ref}` merged into its base `{record.spec.backbone.name}` "
            f"(`merge_and_unload`), with its head(s):\n\n{listing}\n\n"
            "## Load it with transformers alone\n\n```python\n" + LOADER.format(folder=dest) + "```\n\n"
            + (f"Then `run(\"{heads[0]['name']}\", pixels(\"{heads[0]['name']}\", [image]))` gives the head's raw "
               "outputs for a PIL image.\n" if heads else
               "This model answers in text (Florence-2): `AutoModelForImageTextToText` / "
               "`Florence2ForConditionalGeneration.from_pretrained(folder)` with `AutoProcessor`.\n"))
