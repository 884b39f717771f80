"""How much of each input's quality a merged or compressed adapter keeps, measured on real data.

Every input head is evaluated on its own validation data twice: as the input adapter, and as
the matching head of the new adapter. ``retained = after / before`` (in %; ``before / after``
for metrics where lower is better). The data is the source the input was trained on, as the
registry recorded it (synthetic sets regenerate from their options), else ``--eval-data``,
else the head is reported as not measured, saying why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradex.core.data import SYNTHETIC
from loradex.core.errors import DataError, LoradexError
from loradex.core.multitask import MultiTaskModel

EVAL_BATCH = 64


@dataclass(frozen=True)
class Measurement:
    """One input head's primary metric before and after, on its own validation data."""

    input: str
    """``name@vN`` of the input adapter (``name@vN#head`` for a head of a multi-task input)."""
    head: str
    """The head of the new adapter that serves it."""
    task: str
    metric: str
    before: float | None = None
    after: float | None = None
    source: str | None = None
    note: str = ""
    """Why it was not measured, when it was not."""
    greater_is_better: bool = True

    @property
    def retained(self) -> float | None:
        """after / before in % (before / after where lower is better); None when not measured."""
        if self.before is None or self.after is None:
            return None
        if self.greater_is_better:
            return 100.0 * self.after / self.before if self.before > 0 else None
        return 100.0 * self.before / self.after if self.after > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, ``retained`` included."""
        return {**dataclasses.asdict(self), "retained": self.retained}


def recorded_source(args: Mapping[str, Any], head: str) -> str | None:
    """The data an input (one of its heads) was trained or measured on, as the registry recorded it."""
    per_head = args.get("eval_sources")
    if isinstance(per_head, dict) and isinstance(per_head.get(head), str):
        return per_head[head]
    data = args.get("data")
    return data if isinstance(data, str) and data else None


def validation_source(source: str) -> str:
    """``source`` with a synthetic training split cut to a few images: only the validation split is read."""
    if source != SYNTHETIC and not source.startswith(SYNTHETIC + ":"):
        return source
    options = [p for p in source.partition(":")[2].split(",") if p and not p.startswith("train=")]
    return f"{SYNTHETIC}:" + ",".join(["train=8", *options])


def readable(source: str) -> bool:
    """Whether ``source`` is synthetic or a path that still exists."""
    return source == SYNTHETIC or source.startswith(SYNTHETIC + ":") or Path(source).expanduser().exists()


@dataclass
class EvalJob:
    """One input head to measure: where its data is and which heads serve it before and after."""

    input: str
    head: str
    task: Any
    config: dict[str, Any]
    image_size: int
    seed: int
    source: str | None
    note: str = ""
    _dataset: Any = None

    def dataset(self, backbone: Any) -> Any:
        """The validation split, read once."""
        if self._dataset is None:
            assert self.source is not None
            data = self.task.read_data(validation_source(self.source), backbone=backbone, image_size=self.image_size,
                                       seed=self.seed)
            if data.val is None or len(data.val) == 0:
                raise DataError(f"{self.source}: has no validation split to measure {self.input} on")
            for field, value in data.head_config.items():
                if field in self.config and self.config[field] != value:
                    raise DataError(f"{self.source}: its {field} differ from those {self.input} was trained on")
            self._dataset = data.val
        return self._dataset


def plan_jobs(inputs: Sequence[Any], head_of: Mapping[tuple[str, str], str],
              overrides: Mapping[str, str]) -> list[EvalJob]:
    """One job per input head. ``inputs`` are registry records; ``head_of[(ref, head)]`` names the
    head of the new adapter that serves it; ``overrides`` maps an input's name or ref to a path."""
    from loradex.core import plugins

    jobs = []
    for record in inputs:
        for head in record.spec.head_specs():
            label = record.spec.head_key(record.ref, head)
            source = overrides.get(record.ref) or overrides.get(record.name) or recorded_source(record.args, head.name)
            note = ""
            if source is None:
                note = "no recorded data source; pass --eval-data NAME=PATH"
            elif not readable(source):
                note = f"recorded data {source} is gone; pass --eval-data {record.name}=PATH"
                source = None
            jobs.append(EvalJob(input=label, head=head_of[(record.ref, head.name)], task=plugins.get_task(head.task, made_by=record.spec.plugins.get(head.task)),
                                config=dict(head.config), image_size=head.image_size, seed=record.spec.train.seed,
                                source=source, note=note))
    return jobs


def evaluate_head(model: MultiTaskModel, key: str, job: EvalJob) -> float:
    """``job``'s primary metric for head ``key`` of ``model`` on the job's validation data."""
    from loradex.core.inference import evaluate_dataset

    result, _ = evaluate_dataset(job.task, model, job.dataset(model.backbone), head_config=job.config, adapter=key,
                                 batch_size=EVAL_BATCH)
    return float(result.metrics[job.task.primary_metric])


def measure(model: MultiTaskModel, jobs: Sequence[EvalJob], *, before: Mapping[str, str], after: str,
            cache: dict[str, float] | None = None) -> list[Measurement]:
    """Each job's metric with head ``before[job.input]`` and with ``after`` + head of ``model``.

    ``after`` is the new adapter's ref; its head key is ``after`` (single head) or ``after#head``.
    ``cache`` keeps "before" values between calls (``--search`` measures many candidates).
    """
    cache = {} if cache is None else cache
    attached = model.adapters[after]
    keys = {spec.name: entry.key for spec, entry in zip(attached.spec.head_specs(), attached.heads)}
    out = []
    for job in jobs:
        common = dict(input=job.input, head=job.head, task=job.task.name, metric=job.task.primary_metric,
                      source=job.source, greater_is_better=job.task.greater_is_better)
        if job.source is None:
            out.append(Measurement(**common, note=job.note))
            continue
        try:
            if job.input not in cache:
                cache[job.input] = evaluate_head(model, before[job.input], job)
            value_after = evaluate_head(model, keys[job.head], job)
        except LoradexError as exc:
            out.append(Measurement(**{**common, "source": None}, note=str(exc)))
            continue
        out.append(Measurement(**common, before=cache[job.input], after=value_after))
    return out


def summarize(measurements: Sequence[Measurement]) -> dict[str, float]:
    """Metrics to store with the new version: each input's value after, its retained %, and the mean/min."""
    metrics: dict[str, float] = {}
    retained = []
    for m in measurements:
        if m.after is not None:
            metrics[f"{m.input}:{m.metric}"] = m.after
        if m.retained is not None:
            metrics[f"{m.input}:retained"] = round(m.retained, 3)
            retained.append(m.retained)
    if retained:
        metrics["retained_mean"] = round(sum(retained) / len(retained), 3)
        metrics["retained_min"] = round(min(retained), 3)
    return metrics


def table(measurements: Sequence[Measurement]) -> list[str]:
    """Readable lines: input, metric, before → after, retained."""
    lines = []
    for m in measurements:
        if m.retained is None and m.before is None:
            lines.append(f"{m.input:<28} {m.metric:<10} not measured: {m.note}")
        else:
            kept = f"{m.retained:6.1f}%" if m.retained is not None else "     -"
            lines.append(f"{m.input:<28} {m.metric:<10} {m.before:.4f} -> {m.after:.4f}  retained {kept}")
    return lines
