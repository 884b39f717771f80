"""What an imported adapter folder must be before the registry keeps it: loadable.

Checked always: every file is a regular file inside the folder (no links out of it); LoRA
weights come in A/B pairs whose ranks agree with ``adapter_config.json``; the task exists.
Checked against the base when it can be loaded here (a preset, or a local folder): every LoRA
key names a module of the base with fitting shapes, ``target_modules`` matches something, and
each head's weights fit the head its task builds from ``loradex.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loradex.core.errors import ArtifactError, LoradexError
from loradex.core.token_deltas import CONFIG_KEY as TOKENS_CONFIG_KEY
from loradex.core.token_deltas import TOKEN_KEY, listed_indices

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|"
                       r"lora_embedding_B|lora_magnitude_vector)(?:\.[^.]+)?(?:\.weight)?$")


def check_regular_files(folder: Path, files: Mapping[str, Path]) -> None:
    """Refuse links and anything that resolves outside ``folder`` (a README.md → /etc/passwd)."""
    root = folder.resolve()
    for name, path in files.items():
        if path.is_symlink():
            raise ArtifactError(f"{path}: is a symbolic link (to {path.readlink()}); loradex copies only regular "
                                "files from an adapter folder")
        if not path.resolve().is_relative_to(root):
            raise ArtifactError(f"{path}: lies outside {folder}")
        if not path.is_file():
            raise ArtifactError(f"{path}: is not a regular file")


def check_lora_shapes(path: Path, config: Mapping[str, Any], tensors: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """LoRA keys in pairs, ranks as the config says; returns module → {part: shape}."""
    from loradex.core.lora_runtime import _pattern_value

    modules: dict[str, dict[str, list[int]]] = {}
    for key, info in tensors.items():
        token = TOKEN_KEY.match(key)
        if token:  # trained token rows: as many as adapter_config.json lists ids for that embedding
            listed = config.get(TOKENS_CONFIG_KEY)
            if not listed:
                raise ArtifactError(f"{path}: tensor {key!r} holds trained token rows, but adapter_config.json "
                                    f"lists no {TOKENS_CONFIG_KEY}")
            ids = listed_indices(listed, token["module"], str(path))
            shape = list(info["shape"])
            if len(shape) != 2 or shape[0] != len(ids):
                raise ArtifactError(f"{path}: tensor {key!r} has shape {shape}, but {TOKENS_CONFIG_KEY} lists "
                                    f"{len(ids)} tokens")
            modules.setdefault(token["module"], {})["token_delta"] = shape
            continue
        match = _LORA_KEY.match(key)
        if not match:
            raise ArtifactError(f"{path}: tensor {key!r} is not a LoRA weight (lora_A / lora_B of a module, "
                                "or the trained token rows of an embedding)")
        modules.setdefault(match["module"], {})[match["part"]] = list(info["shape"])
    if not any("lora_A" in parts or "lora_embedding_A" in parts for parts in modules.values()):
        raise ArtifactError(f"{path}: holds no LoRA weights")
    rank = config.get("r", 8)
    for module, parts in modules.items():
        if ("lora_A" in parts) != ("lora_B" in parts):
            raise ArtifactError(f"{path}: module {module!r} has {', '.join(parts)} but not its partner factor")
        if "lora_A" in parts:
            expected = int(_pattern_value(config.get("rank_pattern") or {}, module, rank))
            a, b = parts["lora_A"], parts["lora_B"]
            if a[0] != expected or b[-1] != expected:
                raise ArtifactError(f"{path}: module {module!r} has rank-{a[0]} LoRA weights, but adapter_config.json "
                                    f"says r={expected}")
    return modules


def check_against_base(folder: Path, spec: Any, config: Mapping[str, Any], modules: Mapping[str, Mapping[str, list]]
                       ) -> str | None:
    """Load the base if it can be (preset or local folder) and check names, shapes and heads against it.

    Returns a note when the base could not be loaded here (nothing checked against it).
    """
    from loradex.core import plugins

    name = spec.backbone.name
    try:
        backbone_plugin = plugins.resolve_backbone(name)
    except LoradexError:
        return f"base {name!r} is not known here; checked without it"
    if backbone_plugin.name == "hf" and not Path(name).expanduser().is_dir():
        return f"base {name!r} is on the Hub; checked without it"
    try:
        backbone = backbone_plugin.load(name, revision=spec.backbone.revision)
    except LoradexError as exc:
        return f"base {name!r} could not be loaded ({exc}); checked without it"
    native = _check_lora_layers(folder, backbone, modules)
    _check_targets(folder, config, (*native, *native.values()))
    _check_heads(folder, spec, backbone)
    return None


def _check_lora_layers(folder: Path, backbone: Any, modules: Mapping[str, Mapping[str, list]]) -> dict[str, str]:
    """Every LoRA module exists in the base with the in/out sizes of its factors; native name → stored name."""
    name = backbone.ref.name
    native = {backbone.translate_module_name(m) if m not in backbone.module_names else m: m for m in modules}
    for module_name, original in native.items():
        if module_name not in backbone.module_names:
            raise ArtifactError(f"{folder}: its LoRA changes {original!r}, which base {name!r} "
                                f"({backbone.ref.architecture}) does not have")
        weight = getattr(backbone.model.get_submodule(module_name), "weight", None)
        parts = modules[original]
        if weight is not None and "token_delta" in parts and (weight.ndim != 2 or
                                                              parts["token_delta"][1] != weight.shape[1]):
            raise ArtifactError(f"{folder}: its token rows of {original!r} are {parts['token_delta'][1]} wide, "
                                f"but that embedding of {name!r} has shape {list(weight.shape)}")
        if weight is not None and "lora_A" in parts and weight.ndim == 2:
            if parts["lora_A"][-1] != weight.shape[1] or parts["lora_B"][0] != weight.shape[0]:
                raise ArtifactError(f"{folder}: LoRA of {original!r} is {parts['lora_A'][-1]} -> {parts['lora_B'][0]}, "
                                    f"but that layer of {name!r} is {weight.shape[1]} -> {weight.shape[0]}")
    return native


def _check_targets(folder: Path, config: Mapping[str, Any], names: Sequence[str]) -> None:
    """``target_modules`` (a regex or a list) matches at least one of the LoRA's modules."""
    target = config.get("target_modules")
    if isinstance(target, str):
        try:
            matched = any(re.fullmatch(target, m) for m in names)
        except re.error as exc:
            raise ArtifactError(f"{folder}: target_modules {target!r} is not a valid regex ({exc})") from None
        if not matched:
            raise ArtifactError(f"{folder}: target_modules {target!r} matches none of the LoRA's modules")
    elif isinstance(target, (list, tuple)) and target:
        if not any(m == t or m.endswith("." + t) for t in target for m in names):
            raise ArtifactError(f"{folder}: target_modules {list(target)} match none of the LoRA's modules")


def _check_heads(folder: Path, spec: Any, backbone: Any) -> None:
    """Each head file has exactly the tensors, of the shapes, of the head loradex.json describes."""
    from loradex.core import plugins
    from loradex.core.artifact import head_file, load_weights

    for head in spec.head_specs():
        path = folder / head_file(spec, head)
        if not head.config or not path.is_file():
            continue
        try:
            module = plugins.get_task(head.task, made_by=spec.plugins.get(head.task)).head_for(
                backbone, head_config=head.config, image_size=head.image_size)
        except LoradexError as exc:
            raise ArtifactError(f"{folder}: loradex.json head {head.name!r}: {exc}") from None
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in load_weights(path).items()}
        if set(expected) != set(found):
            missing = sorted(set(expected) - set(found))[:3]
            extra = sorted(set(found) - set(expected))[:3]
            raise ArtifactError(f"{path}: does not fit the {head.task} head of loradex.json "
                                f"(missing {missing or 'nothing'}, unexpected {extra or 'nothing'})")
        for key, shape in expected.items():
            if found[key] != shape:
                raise ArtifactError(f"{path}: {key} has shape {list(found[key])}, but the {head.task} head that "
                                    f"loradex.json describes needs {list(shape)} (do its labels match the weights?)")
