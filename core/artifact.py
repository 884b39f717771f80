"""The adapter artifact on disk: PEFT's own files plus the head(s), the spec and a model card.

    adapter_config.json          PEFT LoraConfig       (plain PEFT loads these two)
    adapter_model.safetensors    LoRA weights
    head.safetensors             the task head's weights (single-task adapter, spec format 1)
    head.NAME.safetensors        one per head of a multi-task adapter (spec format 2)
    loradex.json                 the AdapterSpec
    metrics.json                 evaluation metrics
    README.md                    model card
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, FingerprintMismatchError, SpecError
from .spec import AdapterSpec, HeadSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
SPEC_FILE = "loradex.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SPEC_FILE)
"""Files every adapter has; the head files depend on the spec (:func:`head_files`)."""


def head_file(spec: AdapterSpec, head: HeadSpec) -> str:
    """File name of one head's weights: ``head.safetensors``, or ``head.NAME.safetensors`` with several heads."""
    return f"head.{head.name}.safetensors" if spec.is_multitask else HEAD_WEIGHTS


def head_files(spec: AdapterSpec) -> list[str]:
    """File names of every head of ``spec``."""
    return [head_file(spec, head) for head in spec.head_specs()]


def artifact_files(spec: AdapterSpec) -> list[str]:
    """Every file an adapter folder of ``spec`` must hold."""
    return [*REQUIRED_FILES, *head_files(spec)]


def read_spec(folder: Path) -> AdapterSpec:
    """The AdapterSpec in ``folder/loradex.json``; errors name the file."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {folder} is not a loradex adapter folder")
    try:
        return AdapterSpec.from_json(path.read_text(encoding="utf-8"), source=str(path))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None


def read_metrics(folder: Path) -> dict[str, float]:
    """The metrics stored beside an adapter (empty if there are none)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object of metric names to numbers")
    return data


def write_lora(folder: Path, config: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """``adapter_config.json`` and ``adapter_model.safetensors`` exactly as PEFT's ``save_pretrained``
    writes them (sorted JSON; contiguous CPU tensors, ``format: pt``): plain PEFT loads the pair."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})


def write_adapter(
    folder: Path,
    spec: AdapterSpec,
    *,
    lora_config: Mapping[str, Any],
    lora_state: Mapping[str, Any],
    heads: Mapping[str, Mapping[str, Any] | Path],
    metrics: Mapping[str, float] | None = None,
    card: str | None = None,
    name: str | None = None,
) -> Path:
    """THE writer of the adapter format: train, merge, compress and import all come through here.

    ``heads`` maps each head name of ``spec`` to its weights (a state dict), or to a head file
    to copy unchanged (its bytes, and so its blob, stay the same). ``card`` defaults to
    :func:`model_card` (``name``: the adapter's name in it). ``folder`` is created if needed.
    """
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_lora(folder, lora_config, lora_state)
    for head in spec.head_specs():
        weights, target = heads[head.name], folder / head_file(spec, head)
        if isinstance(weights, Path):
            shutil.copyfile(weights, target)
        else:
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(target),
                      metadata={"task": head.task, "format": "loradex-head"})
    for file, data in describing_files(spec, metrics=metrics, card=card, name=name).items():
        (folder / file).write_bytes(data)
    return folder


def spec_bytes(spec: AdapterSpec) -> bytes:
    """The bytes of ``loradex.json`` for ``spec`` (the one place they are made)."""
    return spec.to_json().encode("utf-8")


def describing_files(spec: AdapterSpec, *, metrics: Mapping[str, float] | None = None, card: str | None = None,
                     name: str | None = None) -> dict[str, bytes]:
    """The bytes of ``loradex.json``, ``metrics.json`` and ``README.md`` for ``spec`` (what
    :func:`write_adapter` writes, and what the registry stores for a folder that lacks them)."""
    return {SPEC_FILE: spec_bytes(spec),
            METRICS_FILE: (json.dumps(dict(metrics or {}), indent=2, sort_keys=True) + "\n").encode("utf-8"),
            CARD_FILE: (card if card is not None else model_card(spec, metrics or {}, name=name)).encode("utf-8")}


def peft_files(model: Any, adapter_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter_config, LoRA weights) of the PEFT adapter ``adapter_name`` in ``model``, as
    ``save_pretrained`` would write them: the LoRA factors, and the trained rows of the token
    embeddings (``trainable_token_indices``) as deltas, never the whole embedding matrix."""
    from peft import get_peft_model_state_dict

    config = model.peft_config[adapter_name].to_dict()
    config = {k: list(v) if isinstance(v, set) else v for k, v in config.items()}
    config["inference_mode"] = True
    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return config, state


def save_artifact(
    model: Any,
    spec: AdapterSpec,
    folder: Path,
    *,
    adapter_name: str = "default",
    metrics: Mapping[str, float] | None = None,
    card: str | None = None,
) -> Path:
    """Write the adapter ``adapter_name`` of a TaskModel into ``folder`` (created if needed)."""
    config, state = peft_files(model.encoder, adapter_name)
    head = model.heads[adapter_name].state_dict()
    return write_adapter(folder, spec, lora_config=config, lora_state=state,
                         heads={h.name: head for h in spec.head_specs()}, metrics=metrics, card=card)


def check_complete(folder: Path, spec: AdapterSpec | None = None) -> AdapterSpec:
    """The folder's spec; raise ArtifactError naming the first required file that is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder")
    spec = spec or read_spec(folder)
    for name in artifact_files(spec):
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder / name}: missing from adapter folder")
    return spec


def check_fingerprint(spec: AdapterSpec, backbone_fingerprint: str, *, where: str, allow_mismatch: bool,
                      cure: str = "pass --allow-base-mismatch to load it anyway") -> None:
    """Refuse an adapter trained on another base unless explicitly allowed; ``cure`` ends the message."""
    trained = spec.backbone.fingerprint
    if trained and trained != backbone_fingerprint and not allow_mismatch:
        raise FingerprintMismatchError(
            f"{where} was trained on base {spec.backbone.name!r} with fingerprint {trained[:19]}…, "
            f"but the loaded base has {backbone_fingerprint[:19]}…; {cure}"
        )


def load_weights(path: Path) -> dict[str, Any]:
    """Read a safetensors file (never pickle); a clear error names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json`` of an adapter folder as a dict; errors name the file."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing from adapter folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return data


def _module_of(key: str) -> str:
    """The module a PEFT key belongs to: a LoRA factor's layer, or a trained-token delta's embedding."""
    return key.removeprefix("base_model.model.").split(".lora_", 1)[0].split(".token_adapter.", 1)[0]


def lora_keys_match(folder: Path, backbone: Any) -> bool:
    """Whether every LoRA key in ``folder`` names a module of ``backbone`` as it is (header only)."""
    from safetensors import SafetensorError, safe_open

    path = folder / ADAPTER_WEIGHTS
    modules = backbone.module_names
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None
    return all(_module_of(key) in modules for key in keys)


def read_lora(folder: Path, backbone: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(adapter_config, LoRA weights)`` of ``folder``, with module names native to ``backbone``.

    Adapters saved before transformers 5 name ViT modules ``attention.attention.query``; the
    same modules are ``attention.q_proj`` now. The backbone knows the mapping; keys are renamed
    and ``target_modules`` re-resolved, as if the adapter had been saved today.
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    state = load_weights(folder / ADAPTER_WEIGHTS)
    modules = backbone.module_names
    if all(_module_of(key) in modules for key in state):
        return config, state
    renamed = {backbone.translate_adapter_key(key): value for key, value in state.items()}
    missing = sorted({_module_of(key) for key in renamed} - modules)
    if missing:
        raise ArtifactError(
            f"{folder / ADAPTER_WEIGHTS}: module {missing[0]!r} does not exist in base {backbone.ref.name!r} "
            f"({backbone.ref.architecture}); is this adapter for another architecture?"
        )
    targets = sorted({_module_of(key) for key in renamed})
    config = {**config, "target_modules": "^(" + "|".join(re.escape(t) for t in targets) + ")$"}
    return config, renamed


def native_names(folder: Path, backbone: Any, scratch: Path) -> Path:
    """``folder``, or a copy in ``scratch`` renamed by :func:`read_lora`, for PEFT to load.

    Only the safetensors header is read when no renaming is needed.
    """
    if lora_keys_match(folder, backbone):
        return folder
    write_lora(scratch, *read_lora(folder, backbone))
    return scratch


@dataclass(frozen=True)
class HubPlace:
    """Where a card is published: the repo and tag, the local version, its data and its lineage lines."""

    repo_id: str
    tag: str
    ref: str
    data: str | None = None
    lineage: tuple[str, ...] = ()


def pipeline_tag_of(task: str) -> str | None:
    """The Hub pipeline tag ``task`` declares (:attr:`Task.pipeline_tag`); None for a task not installed."""
    from . import plugins
    from .errors import LoradexError

    try:
        return plugins.get_task(task).pipeline_tag
    except LoradexError:
        return None


def model_card(spec: AdapterSpec, metrics: Mapping[str, float], *, name: str | None = None,
               hub: HubPlace | None = None) -> str:
    """THE model card (README.md) of an adapter, in its folder and on the Hub (``hub``): the metadata
    the Hub reads (huggingface_hub's card classes), how to use it, its metrics, lineage and settings."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base, tasks = spec.backbone, list(spec.tasks)
    pipeline_tag = pipeline_tag_of(spec.task)
    data = (hub.data if hub else None) or "unknown"
    numbers = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float))}
    results = [EvalResult(task_type=pipeline_tag or spec.task, dataset_type=str(data), dataset_name=str(data),
                          metric_type=key, metric_value=value) for key, value in numbers.items()]
    extra: dict[str, Any] = {"base_model": base.name, "base_model_relation": "adapter"} \
        if _REPO_ID.match(base.name) else {}
    card_data = ModelCardData(library_name="peft", pipeline_tag=pipeline_tag if len(tasks) == 1 else None,
                              tags=["loradex", "lora", *tasks], model_name=hub.repo_id if hub else (name or f"{spec.task} adapter"),
                              eval_results=results or None, **extra)
    title = f"{hub.repo_id} ({hub.tag})" if hub else (name or f"{spec.task} adapter")
    stored = f" Stored locally as `{hub.ref}`." if hub else ""
    sections = [f"# {title}", f"A [loradex](https://github.com/loradex/loradex) LoRA adapter for **{', '.join(tasks)}** "
                f"on the shared base `{base.name}`{f' at `{base.revision}`' if base.revision else ''} (fingerprint "
                f"`{base.fingerprint or 'unknown'}`): a LoRA in PEFT's format plus the task "
                f"{'heads' if spec.is_multitask else 'head'}.{stored}", _card_use(name, hub)]
    if numbers:
        sections.append("## Metrics\n\n| metric | value |\n| --- | --- |\n"
                        + "\n".join(f"| {k} | {v:.4f} |" for k, v in numbers.items()))
    if hub and hub.lineage:
        sections.append("## Lineage\n\n" + "\n".join(hub.lineage))
    sections.append(f"## Settings\n\n- LoRA: {spec.lora.describe()}\n"
                    f"- training: {json.dumps(spec.to_dict()['train'], sort_keys=True)}\n"
                    f"- input size: {', '.join(f'{h.name} {h.image_size}px' for h in spec.head_specs())}")
    body = "\n\n".join(sections) + "\n"
    return str(ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n\n" + body))


def _card_use(name: str | None, hub: HubPlace | None) -> str:
    """The card's "use it" sections: the CLI and Python with loradex, and the LoRA in plain PEFT."""
    if hub is None:
        return (f"## Use it\n\n```bash\nadapters predict {name or 'NAME'} image.jpg\n```\n\n"
                "The LoRA part is plain PEFT: `PeftModel.from_pretrained(base, folder)`.")
    ref = f"{hub.repo_id}@{hub.tag}"
    return (f"## Use it with loradex\n\n```bash\nadapters pull {ref}\nadapters predict {ref} photo.jpg --json\n```"
            f"\n\n```python\nimport loradex\nmodel = loradex.load([\"{ref}\"])   # pulled on demand\n"
            f"print(model.predict(\"photo.jpg\")[0].to_dict())\n```\n\n## Use the LoRA with plain PEFT\n\n"
            f"```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base, \"{hub.repo_id}\", "
            f"revision=\"{hub.tag}\")\n```")
