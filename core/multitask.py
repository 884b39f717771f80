"""MultiTaskModel: ONE base in memory, many adapters attached by name, every task in one pass.

The base model is loaded once. Each adapter's LoRA goes into a :class:`LoraBank` (a
dictionary update per layer, however many are attached) and its head into ``heads``.
:meth:`MultiTaskModel.encode_rows` runs a batch whose rows are sorted by adapter through the
base in chunks (the LoRA of each slice applied by the bank); the prediction pipeline on top of
it — which rows, which heads, which options — is :class:`~loradex.core.predictor.Predictor`.

Adapters the bank cannot run (DoRA, trained biases, ``modules_to_save``, non-Linear targets)
switch the model to PEFT's own mixed-batch path, with a one-line notice.

Core knows nothing of the registry: ``add("name@v2")`` asks an :class:`AdapterSource`
(the registry provides one) where that adapter's folder is; :meth:`attach` takes a folder.
"""

from __future__ import annotations

import re
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from . import plugins
from .artifact import check_complete, check_fingerprint, head_file, load_weights, native_names, read_lora
from .backbone import EncoderOutput, LoadedBackbone
from .devices import resolve_device
from .errors import ArtifactError, ConfigError, FingerprintMismatchError, NotFoundError, UnknownNameError
from .lora_runtime import LoraBank, Segment, factors_from_peft, split_plan, unsupported_reason
from .predictor import DEFAULT_BATCH, Predictor
from .results import BaseInfo, ImageResult
from .scratch import scratch_folder
from .spec import AdapterSpec, HeadSpec
from .task import Task


def module_key(ref: str) -> str:
    """A name for ``ref`` that PEFT and ``nn.ModuleDict`` accept (no dots)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", ref)


@dataclass(frozen=True)
class LocatedAdapter:
    """Where an adapter's folder is, as an :class:`AdapterSource` found it."""

    ref: str
    """Canonical reference (``name@vN``); results are keyed by it."""
    folder: Path
    spec: AdapterSpec | None = None
    """The folder's spec, if the source already read it."""


class AdapterSource(Protocol):
    """Finds adapters by reference (the registry is one): what ``MultiTaskModel.add`` calls."""

    def locate(self, ref: str) -> LocatedAdapter:
        """The folder of ``ref`` (``name``, ``name@vN``, ``name@alias``)."""
        ...

    def canonical(self, ref: str) -> str:
        """``ref`` resolved to ``name@vN``."""
        ...


@dataclass
class HeadEntry:
    """One task head on an attached adapter."""

    key: str
    """Results are keyed by it: the adapter's ref (``name@vN#head`` for a multi-task adapter)."""
    task: Task
    module: nn.Module
    config: dict[str, Any]
    image_size: int
    lora: str = ""
    """The name of its adapter's LoRA in the bank (or in PEFT)."""


@dataclass
class AttachedAdapter:
    """An adapter attached to the shared base."""

    ref: str
    spec: AdapterSpec
    lora: str
    """Its name in the LoRA bank (or in PEFT)."""
    heads: tuple[HeadEntry, ...]
    folder: Path
    nbytes: int = 0
    """Bytes of its LoRA factors and head weights."""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names of its heads."""
        return tuple(h.task.name for h in self.heads)


def _note(line: str) -> None:
    print(f"Note: {line}", file=sys.stderr)


class MultiTaskModel(nn.Module):
    """A shared base with adapters attached by reference; :meth:`predict` runs every task at once.

    ``source`` (e.g. the registry) lets :meth:`add`, :meth:`remove` and :meth:`replace` take
    references such as ``"det@prod"``; without one, attach folders with :meth:`attach`.
    """

    def __init__(self, backbone: LoadedBackbone, *, device: Any = None, source: AdapterSource | None = None,
                 say: Callable[[str], None] = _note) -> None:
        super().__init__()
        self.backbone = backbone
        self.base = backbone.model
        self.heads = nn.ModuleDict()
        self.source = source
        self.say = say
        self.__dict__["_peft"] = None  # the PeftModel in PEFT mode; a plain attribute, not a submodule
        self._peft_mode = False
        self._adapters: dict[str, AttachedAdapter] = {}
        self._bank = LoraBank(self.base)
        self._lock = threading.RLock()
        self.device = resolve_device(device)
        self.base.to(self.device)
        self.eval()

    # -- what is attached -------------------------------------------------------------------

    @property
    def adapters(self) -> Mapping[str, AttachedAdapter]:
        """Attached adapters by ref, in attachment order (read-only)."""
        return types.MappingProxyType(dict(self._adapters))

    @property
    def base_info(self) -> BaseInfo:
        """Name, revision and fingerprint of the shared base."""
        ref = self.backbone.ref
        return BaseInfo(name=ref.name, revision=ref.revision, fingerprint=ref.fingerprint)

    @property
    def engine(self) -> str:
        """``"loradex"`` (the LoRA bank) or ``"peft"`` (after an adapter needed PEFT's path)."""
        return "peft" if self._peft_mode else "loradex"

    def head_entries(self) -> list[HeadEntry]:
        """Every head of every attached adapter, in attachment order."""
        return [head for adapter in self._adapters.values() for head in adapter.heads]

    def __repr__(self) -> str:
        return f"MultiTaskModel(base={self.backbone.ref.name!r}, adapters={list(self._adapters)}, device={self.device})"

    # -- attaching and detaching ------------------------------------------------------------

    def attach(self, ref: str, folder: Path, *, spec: AdapterSpec | None = None,
               allow_base_mismatch: bool = False) -> AttachedAdapter:
        """Attach the adapter in ``folder`` under ``ref``; the base stays loaded as it is."""
        folder = Path(folder)
        with self._lock:
            if ref in self._adapters:
                raise ArtifactError(f"{ref} is already attached")
            spec = check_complete(folder, spec)
            check_fingerprint(spec, self.backbone.ref.fingerprint, where=ref, allow_mismatch=allow_base_mismatch)
            lora = module_key(ref)
            entries = []
            for head_spec in spec.head_specs():
                try:
                    task = plugins.get_task(head_spec.task, made_by=spec.plugins.get(head_spec.task))
                except UnknownNameError as exc:
                    if not spec.is_multitask or len(spec.head_specs()) == 1:
                        raise
                    self.say(f"{ref}: head {head_spec.name!r} is left out: {exc}")  # the other heads still serve
                    continue
                self.backbone.check_image_size(head_spec.image_size)
                key = spec.head_key(ref, head_spec)
                module = self._load_head(task, head_spec, folder / head_file(spec, head_spec))
                entries.append(HeadEntry(key=key, task=task, module=module, config=dict(head_spec.config),
                                         image_size=head_spec.image_size, lora=lora))
            if not entries:
                raise UnknownNameError("task", spec.tasks[0], plugins.get_tasks(),
                                       hint=f" None of {ref}'s tasks is installed here.")
            config, state = read_lora(folder, self.backbone)
            reason, factors = unsupported_reason(config), None
            if reason is None:
                try:
                    factors = factors_from_peft(config, state)
                except ArtifactError as exc:
                    reason = str(exc)
            expected = False
            if reason is None:
                reason = next((f"it changes {m!r}, which is not a Linear layer" for m in factors
                               if self._bank.linear(m) is None), None)
                # a conv base's adapters change convs: PEFT's path is the only one there, nothing to tell
                expected = self.backbone.is_convolutional
            if reason is not None and not self._peft_mode:
                if not expected:
                    self.say(f"{ref}: {reason}, which loradex's fast path does not cover; "
                             "running every adapter through PEFT's slower path")
                self._switch_to_peft()
            if self._peft_mode:
                self._peft_load(lora, folder)
                lora_bytes = sum(t.nbytes for t in state.values())
            else:
                self._bank.add(lora, factors)
                lora_bytes = self._bank.nbytes(lora)
            nbytes = lora_bytes
            for entry in entries:
                self.heads[module_key(entry.key)] = entry.module
                nbytes += sum(t.nbytes for t in [*entry.module.parameters(), *entry.module.buffers()])
            attached = AttachedAdapter(ref=ref, spec=spec, lora=lora, heads=tuple(entries), folder=folder,
                                       nbytes=nbytes)
            self._adapters[ref] = attached
            return attached

    def detach(self, ref: str) -> None:
        """Detach an attached adapter; its LoRA factors and head are freed."""
        with self._lock:
            attached = self._adapters.pop(self.attached_key(ref))
            for head in attached.heads:
                del self.heads[module_key(head.key)]
            if self._peft_mode:
                if self._adapters:
                    self._peft.delete_adapter(attached.lora)
                else:  # nothing left that needs PEFT: give the base back as it was
                    self._peft.unload()
                    self.__dict__["_peft"] = None
                    self._peft_mode = False
            else:
                self._bank.remove(attached.lora)

    def add(self, ref: str, *, allow_base_mismatch: bool = False) -> AttachedAdapter:
        """Attach ``ref`` (``name``, ``name@vN``, ``name@alias``) found through this model's source."""
        located = self._require_source().locate(ref)
        return self.attach(located.ref, located.folder, spec=located.spec, allow_base_mismatch=allow_base_mismatch)

    def remove(self, ref: str) -> None:
        """Detach ``ref`` (its full ``name@vN``, its alias, or its name if only one version is attached)."""
        self.detach(ref)

    def replace(self, old: str, new: str, *, allow_base_mismatch: bool = False) -> AttachedAdapter:
        """Swap ``old`` for ``new`` (e.g. ``det@v3`` → ``det@v4``) in place; the base stays loaded.

        ``new`` is attached before ``old`` goes, so a failure leaves the model as it was.
        """
        with self._lock:
            old_key = self.attached_key(old)
            if self.source is not None and self.source.canonical(new) == old_key:
                return self._adapters[old_key]  # already the version asked for
            order = list(self._adapters)
            attached = self.add(new, allow_base_mismatch=allow_base_mismatch)
            self.detach(old_key)
            position = order.index(old_key)
            keys = [k for k in self._adapters if k != attached.ref]
            keys.insert(position, attached.ref)
            self._adapters = {k: self._adapters[k] for k in keys}
            return attached

    def _require_source(self) -> AdapterSource:
        if self.source is None:
            raise ConfigError("this model has no adapter source; use attach(ref, folder), or loradex.load()")
        return self.source

    def attached_key(self, ref: str) -> str:
        """The key (``name@vN``) of the attached adapter ``ref`` names: its key, alias, or unique name."""
        if ref in self._adapters:
            return ref
        if self.source is not None and "@" in ref:
            try:
                canonical = self.source.canonical(ref)
            except NotFoundError:
                canonical = None
            if canonical in self._adapters:
                return canonical
        same_name = [key for key in self._adapters if key.split("@", 1)[0] == ref]
        if len(same_name) == 1:
            return same_name[0]
        from .errors import suggest

        attached = ", ".join(self._adapters) or "none"
        if same_name:
            raise NotFoundError(f"{ref!r} matches several attached versions ({', '.join(same_name)}); name one")
        raise NotFoundError(f"{ref!r} is not attached.{suggest(ref, self._adapters)} Attached: {attached}")

    def _load_head(self, task: Task, head_spec: HeadSpec, path: Path) -> nn.Module:
        head = task.head_for(self.backbone, head_config=head_spec.config, image_size=head_spec.image_size)
        try:
            head.load_state_dict(load_weights(path))
        except RuntimeError as exc:
            raise ArtifactError(f"{path}: does not fit the {head_spec.task} head ({exc})") from None
        return head.to(self.device).eval()

    # -- the PEFT path, for adapters the bank does not cover -----------------------------------

    def _switch_to_peft(self) -> None:
        self._bank.clear()
        self._peft_mode = True
        for attached in self._adapters.values():
            self._peft_load(attached.lora, attached.folder)

    def _peft_load(self, lora: str, folder: Path) -> None:
        from peft import PeftModel

        with scratch_folder("peft") as scratch:
            source = native_names(folder, self.backbone, Path(scratch))
            try:
                if self._peft is None:
                    self.__dict__["_peft"] = PeftModel.from_pretrained(self.base, str(source), adapter_name=lora)
                else:
                    self._peft.load_adapter(str(source), adapter_name=lora)
            except (ValueError, OSError, KeyError, RuntimeError) as exc:
                raise ArtifactError(f"{folder}: PEFT could not load the adapter ({exc})") from None
        self._peft.to(self.device).eval()
        self._peft.requires_grad_(False)

    # -- running ----------------------------------------------------------------------------

    def encode_rows(self, pixel_values: torch.Tensor, plan: Sequence[Segment], *,
                    batch_size: int = DEFAULT_BATCH) -> EncoderOutput:
        """Encoder features of a batch whose rows ``plan`` assigns to adapters (by LoRA name).

        The base runs on at most ``batch_size`` rows at a time.
        """
        pixel_values = pixel_values.to(self.device)
        parts: list[EncoderOutput] = []
        with torch.inference_mode():
            for start, stop, chunk in split_plan(plan, batch_size):
                rows = pixel_values[start:stop]
                if not self._peft_mode:
                    with LoraBank.segments(chunk):
                        parts.append(self.backbone.encode(self.base, rows))
                else:  # PEFT's adapter_names path refuses DoRA: one adapter at a time, as PEFT does it
                    for seg in chunk:
                        parts.append(self._peft_encode(rows[seg.start:seg.stop], seg.adapter))
        return EncoderOutput.concat(parts)

    def _peft_encode(self, rows: torch.Tensor, lora: str | None) -> EncoderOutput:
        if lora is None:
            with self._peft.disable_adapter():
                return self.backbone.encode(self._peft, rows)
        if self._peft.active_adapter != lora:
            self._peft.set_adapter(lora, inference_mode=True)
        return self.backbone.encode(self._peft, rows)

    def runner(self, adapter: str | None = None) -> AdapterRunner:
        """The base with one head's adapter on, to call or ``.generate`` with (tasks that own their forward)."""
        return AdapterRunner(self, self._entry(adapter).lora)

    def _entry(self, adapter: str | None) -> HeadEntry:
        entries = self.head_entries()
        if adapter is None:
            if len(entries) != 1:
                raise ConfigError(f"the model holds {len(entries)} heads; name one")
            return entries[0]
        entry = next((h for h in entries if h.key == adapter), None)
        if entry is None:
            raise NotFoundError(f"no head {adapter!r}; heads: {', '.join(h.key for h in entries)}")
        return entry

    def forward(self, pixel_values: torch.Tensor, adapter: str | None = None) -> Any:
        """Raw head outputs of one adapter's head (``adapter``: its key; the only one if None)."""
        entry = self._entry(adapter)
        features = self.encode_rows(pixel_values, [Segment(entry.lora, 0, pixel_values.shape[0])])
        with torch.inference_mode():
            return entry.module(features)

    def predict(self, images: Any, *, tasks: Sequence[str] | str | None = None, batch_size: int = DEFAULT_BATCH,
                skip_bad: bool = False, workers: int | None = None, **options: Any) -> list[ImageResult]:
        """Every chosen task's prediction for every image: one :class:`ImageResult` per image.

        ``images``: a path (file, folder or glob), a PIL image, a numpy array, or a list of
        them. ``tasks``: refs (or names, or task names) of attached adapters; None means all.
        ``options`` are the tasks' prediction options (``top_k=3``, ``min_score=0.5``); a key
        applies to every chosen task that takes it, ``classification.top_k`` to one task only.
        With ``skip_bad``, an image that cannot be read gets a result with ``error`` set
        instead of stopping the run.
        """
        return list(self.stream(images, tasks=tasks, batch_size=batch_size, skip_bad=skip_bad, workers=workers,
                                **options))

    def stream(self, images: Any, *, tasks: Sequence[str] | str | None = None, batch_size: int = DEFAULT_BATCH,
               skip_bad: bool = False, workers: int | None = None, **options: Any) -> Iterator[ImageResult]:
        """Like :meth:`predict`, but yields results batch by batch: 10,000 files never sit in memory at once.

        ``workers``: threads that decode the next batch while this one runs (default: one per
        usable core; 0 decodes in the calling thread). The pipeline itself is
        :class:`~loradex.core.predictor.Predictor`, which ``adapters serve`` runs too.
        """
        return Predictor(self).stream(images, tasks=tasks, batch_size=batch_size, skip_bad=skip_bad,
                                      workers=workers, **options)

    def to(self, *args: Any, **kwargs: Any) -> MultiTaskModel:  # type: ignore[override]
        """Move base, heads and every adapter's factors (``model.to("cuda")``)."""
        super().to(*args, **kwargs)
        self.device = next(self.base.parameters()).device
        self._bank.to(self.device)
        return self


class AdapterRunner:
    """The shared base with one adapter on: ``runner(**inputs)`` and ``runner.generate(**inputs)``.

    Every row of every pass goes through that adapter, whatever the base does with the batch
    (windows, beams), so a vision-language model generates as it would with the adapter merged.
    """

    def __init__(self, model: MultiTaskModel, lora: str) -> None:
        self.model, self.lora = model, lora

    def _target(self) -> Any:
        if self.model._peft_mode:
            peft = self.model._peft
            if peft.active_adapter != self.lora:
                peft.set_adapter(self.lora, inference_mode=True)
            return peft
        return self.model.base

    def __call__(self, **inputs: Any) -> Any:
        with LoraBank.segments([Segment(self.lora, 0, 1)]):
            return self._target()(**inputs)

    def generate(self, **inputs: Any) -> Any:
        """The base's ``generate`` with this adapter on."""
        with LoraBank.segments([Segment(self.lora, 0, 1)]):
            return self._target().generate(**inputs)


def check_same_base(refs_and_specs: Sequence[tuple[str, AdapterSpec]]) -> None:
    """Refuse adapters that name different bases; the error names both and their fingerprints."""
    first_ref, first = refs_and_specs[0]
    for ref, spec in refs_and_specs[1:]:
        a, b = first.backbone, spec.backbone
        same_fingerprint = not a.fingerprint or not b.fingerprint or a.fingerprint == b.fingerprint
        if (a.name, a.revision) != (b.name, b.revision) or not same_fingerprint:
            raise FingerprintMismatchError(
                f"{first_ref} is on base {_base_text(a)} but {ref} on {_base_text(b)}; "
                "adapters used together must share one base"
            )


def _base_text(ref: Any) -> str:
    name = repr(ref.name) + (f"@{ref.revision}" if ref.revision else "")
    return f"{name} ({ref.fingerprint[:19]}…)" if ref.fingerprint else name
