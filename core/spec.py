"""AdapterSpec: the frozen, JSON-serialisable description of one adapter.

An adapter is a LoRA on a shared base plus a task head. Its spec records everything needed
to rebuild it: the task, the base (with a fingerprint of its weights), the LoRA settings,
the head configuration and the training hyper-parameters. ``loradex.json`` in an adapter
folder is ``AdapterSpec.to_json()``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import SpecError, suggest

SPEC_FORMAT = 1
"""Format of a single-task spec; unchanged since the first release, so old adapters still load."""
MULTITASK_FORMAT = 2
"""Format of a spec with ``heads``: one LoRA, one head per task (what a multi-task merge writes)."""
MULTITASK = "multitask"
"""The ``task`` of a multi-task adapter; its tasks are those of its heads."""
SEMANTIC_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.in", "mlp.out", "vision.attn", "vision.mlp",
                    "attn.qkv", "conv.pw", "conv.full")
"""What a LoRA can target, named the same on every architecture. ``attn.*`` and ``mlp.*`` are the
transformer blocks of an encoder (a ViT) or the language model of a vision-language model;
``vision.*`` the vision tower of a vision-language model (Florence-2's attention and MLP).
``attn.qkv`` is a fused query-key-value projection (timm's ViTs; on those ``attn.q``/``k``/``v``
name the same layer); ``conv.pw`` the pointwise (1x1) convolutions of a CNN's blocks and head,
``conv.full`` its dense kxk convolutions (timm's EfficientNets, ResNets, ...). New names are
appended, so the order of older specs' targets never changes."""
TARGET_GROUPS = {"attn": SEMANTIC_TARGETS[:4], "mlp": SEMANTIC_TARGETS[4:6], "all": SEMANTIC_TARGETS[:6],
                 "vision": SEMANTIC_TARGETS[6:8], "conv": SEMANTIC_TARGETS[9:11]}
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
MIXES = ("interleave", "sequential")
CACHES = ("ram", "disk")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
"""transformers' learning-rate schedules that need nothing but warmup and step counts."""

T = TypeVar("T")


def _help(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    return field(default=default, metadata={"help": text}, **kw)


def parse_targets(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Turn ``"q,v"`` / ``["attn.q", "mlp"]`` into semantic targets (``attn.q``, ...).

    Short forms ``q k v o`` mean ``attn.*``; ``attn``, ``mlp`` and ``all`` expand to groups.
    """
    out: list[str] = []
    for item in _comma_items(value, "LoRA targets", "names"):
        if item in TARGET_GROUPS:
            expanded = TARGET_GROUPS[item]
        elif item in ("q", "k", "v", "o"):
            expanded = (f"attn.{item}",)
        elif item in SEMANTIC_TARGETS:
            expanded = (item,)
        else:
            raise SpecError(
                f"unknown LoRA target {item!r}.{suggest(item, SEMANTIC_TARGETS)} "
                f"Use {', '.join(SEMANTIC_TARGETS)} or {', '.join(TARGET_GROUPS)}."
            )
        out.extend(t for t in expanded if t not in out)
    if not out:
        raise SpecError("LoRA targets are empty: name at least one of " + ", ".join(SEMANTIC_TARGETS))
    return tuple(t for t in SEMANTIC_TARGETS if t in out)


def parse_tokens(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Turn ``"<loc_*>,<OD>"`` / ``["<loc_*>"]`` into token patterns (duplicates and blanks dropped)."""
    if isinstance(value, (list, tuple)) and not all(isinstance(raw, str) for raw in value):
        raise SpecError(f"lora tokens must be text, got {value!r}")
    return tuple(dict.fromkeys(_comma_items(value, "lora tokens", "tokens")))


def _comma_items(value: str | list[str] | tuple[str, ...], what: str, of: str) -> list[str]:
    """The stripped, non-blank items of a comma list or a list (``what`` names the setting in errors)."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise SpecError(f"{what} must be a comma list or a list of {of}, got {value!r}")
    return [item for item in (str(raw).strip() for raw in items) if item]


@dataclass(frozen=True, kw_only=True)
class BackboneRef:
    """Which base an adapter belongs to."""

    name: str = _help("Built-in preset name, Hub repo id or local folder of the base model.")
    revision: str | None = _help("Pinned Hub revision (commit, tag or branch); None for presets.", None)
    fingerprint: str = _help("sha256 over the base weights (names, dtypes, shapes, bytes).", "")
    architecture: str = _help("transformers model_type of the base, e.g. 'vit'.", "")


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """LoRA hyper-parameters, with targets named semantically (``attn.q``, ``mlp.in``, ...)."""

    rank: int = _help("LoRA rank r.", 16)
    alpha: float = _help("LoRA alpha; the update is scaled by alpha / rank.", 32.0)
    dropout: float = _help("Dropout on the LoRA input.", 0.0)
    targets: tuple[str, ...] = _help("Semantic target modules.", ("attn.q", "attn.v"))
    target_modules: str | None = _help(
        "Regex of the real module names, resolved by the backbone; None until resolved.", None
    )
    tokens: tuple[str, ...] = _help(
        "Token embeddings trained beside the LoRA (PEFT's trainable_token_indices), for bases that read text: "
        "tokens or globs such as '<loc_*>' or '<OD>'. Empty: none.", ()
    )
    token_indices: tuple[int, ...] = _help(
        "The token ids that ``tokens`` names, resolved by the base's tokenizer; empty until resolved.", ()
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise SpecError(f"lora rank must be a positive integer, got {self.rank!r}")
        if not _is_number(self.alpha) or self.alpha <= 0:
            raise SpecError(f"lora alpha must be a positive number, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise SpecError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "targets", parse_targets(self.targets))
        object.__setattr__(self, "tokens", parse_tokens(self.tokens))
        indices = self.token_indices
        if not isinstance(indices, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
            raise SpecError(f"lora token_indices must be a list of token ids, got {indices!r}")
        if indices and not self.tokens:
            raise SpecError("lora token_indices are set but tokens is empty; name the tokens they resolve")
        object.__setattr__(self, "token_indices", tuple(sorted(set(indices))))

    def describe(self) -> str:
        """One line for ``adapters show`` and model cards: ``rank 16, alpha 32, dropout 0, targets …``."""
        text = f"rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g}, targets {', '.join(self.targets)}"
        if self.tokens:
            text += f", token rows {', '.join(self.tokens)} ({len(self.token_indices):,} ids)"
        return text


AUGMENTATIONS = {"fliplr": 0.5, "flipud": 0.0, "rot90": 0.0}
"""Training-time augmentation probabilities and their defaults: left out of a spec's JSON while they are
the defaults, so specs written before they existed (and every classification spec) read the same."""


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Training hyper-parameters; the engine reads only these."""

    epochs: int = _help("Maximum number of passes over the training split.", 10)
    batch_size: int = _help("Images per optimisation step (before accumulation).", 32)
    lr: float = _help("Peak learning rate of the LoRA weights.", 1e-3)
    head_lr: float | None = _help("Peak learning rate of the head; None means lr.", None)
    weight_decay: float = _help("AdamW weight decay.", 0.01)
    warmup_ratio: float = _help("Fraction of the steps spent warming the learning rate up.", 0.1)
    scheduler: str = _help("transformers scheduler name: cosine, linear, constant, ...", "cosine")
    grad_accum: int = _help("Gradient accumulation steps.", 1)
    mixed_precision: str = _help("auto (bf16/fp16 on a GPU, none on CPU), no, fp16 or bf16.", "auto")
    patience: int | None = _help("Stop after this many epochs without improvement; None: never.", None)
    monitor: str | None = _help("Validation metric for early stopping and the best epoch.", None)
    seed: int = _help("Seed for data order, head init and LoRA init, and for the 80/20 split of a dataset that "
                      "comes without a val split (so another seed validates on other images).", 0)
    image_size: int | None = _help("Input resolution; None uses the backbone's.", None)
    max_train_samples: int | None = _help("Use at most this many training images.", None)
    mix: str = _help("Order of data of several kinds (grounding: OD, region captions, phrases): interleave "
                     "(shuffled together) or sequential (one kind after another).", "interleave")
    fliplr: float = _help("Probability of a left-right flip of a training image (detection: boxes moved with it; "
                          "pose: left and right keypoints swapped; Ultralytics' fliplr).", 0.5)
    flipud: float = _help("Probability of an up-down flip of a training image (detection; 0.5 for aerial and "
                          "microscope images, where up is arbitrary).", 0.0)
    rot90: float = _help("Probability of a quarter turn, either way, of a square training image (detection; with "
                         "both flips at 0.5, every one of the 8 orientations alike).", 0.0)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise SpecError(f"{name} must be a positive number, got {value!r}")
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise SpecError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise SpecError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise SpecError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if self.scheduler not in SCHEDULERS:
            raise SpecError(f"scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}."
                            + suggest(str(self.scheduler), SCHEDULERS))
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            raise SpecError(f"monitor must be a metric name, got {self.monitor!r}")
        for name in AUGMENTATIONS:
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise SpecError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.mix not in MIXES:
            raise SpecError(f"mix must be one of {', '.join(MIXES)}, got {self.mix!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise SpecError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        for name in ("patience", "image_size", "max_train_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(f"{name} must be a positive integer or null, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """How THIS machine runs a training job: speed, never the result, so never stored with the adapter.

    A seeded run gives the same weights with any of these (tested), and another machine picks
    its own; they live in the run folder's ``args.yaml``, not in ``loradex.json`` or the Hub card.
    Adapters stored before they moved out of :class:`TrainSettings` keep loading (the keys are
    dropped when a spec is read).
    """

    workers: int | None = _help("Data-loading worker processes; None fits the machine (0 on a small CPU, up to 8 "
                                "with a GPU).", None)
    cache: str | None = _help("Keep decoded, resized images: ram or disk (under the loradex home); None: decode "
                              "every epoch.", None)
    compile: bool = _help("torch.compile the model (measure it: it pays on GPUs, rarely on CPUs).", False)

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or isinstance(self.workers, bool)
                                         or self.workers < 0):
            raise SpecError(f"workers must be an integer >= 0 or null, got {self.workers!r}")
        if self.cache is not None and self.cache not in CACHES:
            raise SpecError(f"cache must be one of {', '.join(CACHES)} or null, got {self.cache!r}")
        if not isinstance(self.compile, bool):
            raise SpecError(f"compile must be true or false, got {self.compile!r}")


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeSettings))
"""Keys a ``train`` mapping held before they became runtime settings (stored specs up to 0.x)."""


_HEAD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """One task head of an adapter: which task, its configuration and its input size."""

    name: str = _help("Unique within the adapter; its weights are head.NAME.safetensors.")
    task: str = _help("Name of the task plugin that owns this head.")
    config: dict[str, Any] = _help("Head configuration (labels, keypoints, ...), JSON values only.",
                                   dataclasses.MISSING, default_factory=dict)
    image_size: int = _help("Input resolution this head was trained at.", 224)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _HEAD_NAME.fullmatch(self.name):
            raise SpecError(f"head name {self.name!r} must be lowercase letters, digits, '_' or '-'")
        if not self.task or not isinstance(self.task, str):
            raise SpecError(f"head {self.name!r}: 'task' must be a non-empty string")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1:
            raise SpecError(f"head {self.name!r}: image_size must be a positive integer, got {self.image_size!r}")
        try:
            object.__setattr__(self, "config", json.loads(json.dumps(dict(self.config), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"head {self.name!r}: 'config' must hold JSON values only: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class AdapterSpec:
    """Everything that defines one adapter; round-trips through JSON exactly.

    A single-task adapter (what training makes) names its ``task``, ``head`` configuration
    and ``image_size`` (format 1). A multi-task adapter (what a merge of different tasks makes)
    has ``task == "multitask"`` and one :class:`HeadSpec` per task in ``heads`` (format 2).
    Code that handles both iterates :meth:`head_specs`.
    """

    task: str = _help("Name of the task plugin that owns the head ('multitask' for several heads).")
    backbone: BackboneRef = _help("The base model the LoRA applies to.")
    lora: LoraSettings = _help("LoRA settings.", dataclasses.MISSING, default_factory=LoraSettings)
    head: dict[str, Any] = _help("Task head configuration (labels, keypoints, ...), JSON values only.",
                                 dataclasses.MISSING, default_factory=dict)
    train: TrainSettings = _help("Training hyper-parameters.", dataclasses.MISSING, default_factory=TrainSettings)
    image_size: int = _help("Input resolution the adapter was trained at.", 224)
    heads: tuple[HeadSpec, ...] = _help("The heads of a multi-task adapter (empty for a single task).", ())
    plugins: dict[str, str] = _help("The package that provided each task, with its version (``{'segmentation': "
                                    "'loradex 0.1.0'}``): what to install where the task is missing.",
                                    dataclasses.MISSING, default_factory=dict)
    format: int = _help("Spec format version: 1 single-task, 2 with heads.", SPEC_FORMAT)

    def __post_init__(self) -> None:
        if not self.task or not isinstance(self.task, str):
            raise SpecError("spec field 'task' must be a non-empty string")
        try:  # keep only JSON values so that from_json(to_json()) == self
            object.__setattr__(self, "head", json.loads(json.dumps(dict(self.head), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"spec field 'head' must hold JSON values only: {exc}") from None
        heads = tuple(h if isinstance(h, HeadSpec) else settings_from_mapping(HeadSpec, h, source="head")
                      for h in self.heads)
        object.__setattr__(self, "heads", heads)
        if heads:
            names = [h.name for h in heads]
            if len(set(names)) != len(names):
                raise SpecError(f"spec heads must have distinct names, got {names}")
            if self.task != MULTITASK:
                raise SpecError(f"a spec with heads has task {MULTITASK!r}, not {self.task!r}")
            object.__setattr__(self, "format", MULTITASK_FORMAT)
        elif self.task == MULTITASK:
            raise SpecError(f"a {MULTITASK!r} spec needs at least one entry in 'heads'")
        elif self.format != SPEC_FORMAT:
            raise SpecError(f"a spec of format {self.format!r} needs 'heads'; a single-task spec is format {SPEC_FORMAT}")

    @property
    def is_multitask(self) -> bool:
        """Whether this adapter carries several heads (format 2)."""
        return bool(self.heads)

    def head_specs(self) -> tuple[HeadSpec, ...]:
        """Every head: ``heads`` of a multi-task adapter, else one built from task/head/image_size."""
        if self.heads:
            return self.heads
        return (HeadSpec(name=self.task, task=self.task, config=self.head, image_size=self.image_size),)

    def head_key(self, ref: str, head: HeadSpec) -> str:
        """How results name ``head`` of this adapter stored as ``ref``: ``ref``, or ``ref#head`` for several heads."""
        return f"{ref}#{head.name}" if self.is_multitask else ref

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task of every head."""
        return tuple(h.task for h in self.head_specs())

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON dict of the spec (a single-task spec has no ``heads`` key, as in format 1)."""
        data = dataclasses.asdict(self)
        data["lora"]["targets"] = list(self.lora.targets)
        if self.lora.tokens:
            data["lora"]["tokens"] = list(self.lora.tokens)
            data["lora"]["token_indices"] = list(self.lora.token_indices)
        else:  # specs written before trainable tokens read the same
            del data["lora"]["tokens"], data["lora"]["token_indices"]
        for name, default in AUGMENTATIONS.items():
            if data["train"][name] == default:
                del data["train"][name]
        if not self.plugins:  # specs written before provenance was recorded read the same
            del data["plugins"]
        if not self.heads:
            del data["heads"]
        else:
            data["heads"] = [dataclasses.asdict(h) for h in self.heads]
        return data

    def to_json(self) -> str:
        """The spec as indented JSON text (the content of ``loradex.json``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "spec") -> AdapterSpec:
        """Build and validate a spec from a mapping; faults name ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: expected a JSON object")
        data = dict(data)
        fmt = data.get("format", SPEC_FORMAT)
        if fmt not in (SPEC_FORMAT, MULTITASK_FORMAT):
            raise SpecError(f"{source}: spec format {fmt!r} is not supported "
                            f"(this loradex reads {SPEC_FORMAT} and {MULTITASK_FORMAT}); upgrade loradex")
        if "heads" in data:
            if not isinstance(data["heads"], list):
                raise SpecError(f"{source}: 'heads' must be a list of head objects")
            data["heads"] = tuple(settings_from_mapping(HeadSpec, h, source=f"{source}: heads[{i}]")
                                  for i, h in enumerate(data["heads"]))
        if isinstance(data.get("train"), Mapping):  # stored before workers/cache/compile became runtime settings
            data["train"] = {k: v for k, v in data["train"].items() if k not in RUNTIME_FIELDS}
        try:
            for key, sub in (("backbone", BackboneRef), ("lora", LoraSettings), ("train", TrainSettings)):
                if key in data:
                    data[key] = settings_from_mapping(sub, data[key], source=f"{source}: {key}")
            return settings_from_mapping(cls, data, source=source, nested_ok=True)
        except SpecError as exc:
            msg = str(exc)
            raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "loradex.json") -> AdapterSpec:
        """Parse ``loradex.json`` text."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SpecError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=source)

    def replace(self, **changes: Any) -> AdapterSpec:
        """A copy with some fields changed (the spec itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_lora_config(self, *, inference_mode: bool = False):
        """The equivalent ``peft.LoraConfig`` (targets must be resolved by the backbone)."""
        from peft import LoraConfig

        if not self.lora.target_modules:
            raise SpecError("LoRA targets are not resolved to module names; load the backbone first")
        if self.lora.tokens and not self.lora.token_indices:
            raise SpecError("LoRA tokens are not resolved to token ids; load the backbone first")
        alpha = self.lora.alpha
        tokens = {"trainable_token_indices": list(self.lora.token_indices)} if self.lora.token_indices else {}
        return LoraConfig(
            r=self.lora.rank,
            lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
            lora_dropout=self.lora.dropout,
            target_modules=self.lora.target_modules,
            bias="none",
            base_model_name_or_path=self.backbone.name,
            revision=self.backbone.revision,
            inference_mode=inference_mode,
            **tokens,
        )


def settings_from_mapping(cls: type[T], data: Any, *, source: str, nested_ok: bool = False) -> T:
    """Build dataclass ``cls`` from ``data``, naming ``source`` and the field on any fault."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise SpecError(f"{source}: unknown setting {key!r}.{suggest(str(key), names)}")
    try:
        return cls(**dict(data))
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise SpecError(f"{source}: {exc}") from None


def field_help(cls: type, name: str) -> str:
    """The help text of a settings field (used by the CLI for option help)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
