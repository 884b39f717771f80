"""Turn a plain PEFT adapter folder (as a hand-written script saves it) into a loradex version.

The folder needs ``adapter_config.json`` and ``adapter_model.safetensors``; ``head.safetensors``,
``loradex.json``, ``metrics.json`` and ``README.md`` are taken when present. Without a
``loradex.json`` the spec is rebuilt from the PEFT config: the base from
``base_model_name_or_path``, rank/alpha/dropout from ``r``/``lora_alpha``/``lora_dropout`` and
the semantic targets by classifying each ``target_modules`` name (``query`` → ``attn.q``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradex.core.artifact import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CARD_FILE,
    HEAD_WEIGHTS,
    METRICS_FILE,
    SPEC_FILE,
    head_files,
    read_metrics,
    read_spec,
)
from loradex.core.backbone import classify_block_module
from loradex.core.errors import ArtifactError, SpecError
from loradex.core.spec import AdapterSpec, BackboneRef, LoraSettings

from loradex.core import plugins

from loradex.core.token_deltas import CONFIG_KEY as TOKENS_CONFIG_KEY
from loradex.core.token_deltas import id_ranges
from loradex.registry.store.import_checks import check_against_base, check_lora_shapes, check_regular_files
from loradex.registry.store.weights import check_finite, check_safetensors, refuse_pickles


@dataclass(frozen=True)
class ImportPlan:
    """What an import stores: the spec, the files to copy and the metrics found."""

    spec: AdapterSpec
    files: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    has_spec_file: bool = False
    note: str | None = None
    """What could not be checked (the base was not loadable here)."""


def read_config(folder: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of ``folder`` (a JSON object), or ArtifactError."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {ADAPTER_CONFIG}; this is not a PEFT adapter folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return data


def semantic_targets(target_modules: Any) -> tuple[tuple[str, ...], str]:
    """(semantic targets, regex of module names) for a PEFT ``target_modules`` value."""
    if isinstance(target_modules, str):
        regex = target_modules
        plain = target_modules.replace(r"\.", ".")
        candidates = [c.strip(".") for c in re.split(r"[^A-Za-z0-9_.]+", plain)]
    elif isinstance(target_modules, (list, tuple)) and all(isinstance(t, str) for t in target_modules) and target_modules:
        names = sorted(set(target_modules))
        regex = rf"^(.*\.)?({'|'.join(re.escape(n) for n in names)})$"
        candidates = list(names)
    else:
        raise ArtifactError(f"target_modules {target_modules!r} is neither a module-name list nor a regex")
    found = {classify_block_module(c) for c in candidates if c}
    found.discard(None)
    if not found:
        raise ArtifactError(
            f"cannot tell which attention/MLP modules target_modules {target_modules!r} names "
            "(expected names such as query, value, q_proj, fc1)"
        )
    return tuple(sorted(found)), regex  # type: ignore[arg-type]


def spec_from_config(config: Mapping[str, Any], *, task: str, source: str, base: str | None = None) -> AdapterSpec:
    """Build an AdapterSpec (head config unknown, fingerprint unknown) from a PEFT LoRA config.

    ``base`` overrides (or supplies, when the script built its model from a config) the
    config's ``base_model_name_or_path``.
    """
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ArtifactError(f"{source}: peft_type {peft_type!r} is not LoRA; loradex stores LoRA adapters only")
    base = base or config.get("base_model_name_or_path") or ""
    if not isinstance(base, str) or not base:
        raise ArtifactError(
            f"{source}: base_model_name_or_path is empty; say which base it belongs to (--base NAME)"
        )
    targets, regex = semantic_targets(config.get("target_modules"))
    listed = config.get(TOKENS_CONFIG_KEY) or []
    groups = list(listed.values()) if isinstance(listed, dict) else [listed]
    ids = [i for group in groups if isinstance(group, list) for i in group]
    if not all(isinstance(g, list) for g in groups) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ArtifactError(f"{source}: {TOKENS_CONFIG_KEY} must list token ids (non-negative integers), "
                            f"got {listed!r:.80}")
    try:
        lora = LoraSettings(
            rank=config.get("r", 8),
            alpha=config.get("lora_alpha", 8),
            dropout=config.get("lora_dropout", 0.0) or 0.0,
            targets=targets,
            target_modules=regex,
            tokens=id_ranges(ids),
            token_indices=ids,
        )
        return AdapterSpec(
            task=task,
            backbone=BackboneRef(name=base, revision=config.get("revision"), fingerprint=""),
            lora=lora,
            head={},
        )
    except SpecError as exc:
        raise ArtifactError(f"{source}: {exc}") from None


def plan_import(folder: Path, *, task: str, base: str | None = None) -> ImportPlan:
    """Check ``folder`` and work out what importing it stores; nothing is written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder")
    config = read_config(folder)
    refuse_pickles(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{folder}: no {ADAPTER_WEIGHTS}; save the adapter with safetensors")
    files = {ADAPTER_CONFIG: folder / ADAPTER_CONFIG, ADAPTER_WEIGHTS: weights}
    spec_in_folder = read_spec(folder) if (folder / SPEC_FILE).is_file() else None
    heads = head_files(spec_in_folder) if spec_in_folder else [HEAD_WEIGHTS]
    for name in (*heads, SPEC_FILE, METRICS_FILE, CARD_FILE):
        if (folder / name).is_file():
            files[name] = folder / name
    check_regular_files(folder, {**files, ADAPTER_CONFIG: folder / ADAPTER_CONFIG})
    tables = {name: check_safetensors(path) for name, path in files.items() if name.endswith(".safetensors")}
    for name, path in files.items():
        if name.endswith(".safetensors"):
            check_finite(path)
    plugins.get_task(task)  # an unknown task name fails here, with a suggestion
    if spec_in_folder is not None:
        spec = spec_in_folder
        if task not in spec.tasks and task != spec.task:
            raise ArtifactError(f"{folder / SPEC_FILE}: the adapter is for task {spec.task!r}, not {task!r}")
        for head_task in spec.tasks:  # every head's task must be one a plugin here provides
            plugins.get_task(head_task, made_by=spec.plugins.get(head_task))
    else:
        spec = spec_from_config(config, task=task, source=str(folder / ADAPTER_CONFIG), base=base)
    modules = check_lora_shapes(weights, config, tables[ADAPTER_WEIGHTS])
    note = check_against_base(folder, spec, config, modules)
    return ImportPlan(spec=spec, files=files, metrics=read_metrics(folder), has_spec_file=SPEC_FILE in files,
                      note=note)
