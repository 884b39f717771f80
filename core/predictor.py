"""The prediction pipeline: images and the heads asked of each → one mixed pass → plain predictions.

:class:`Predictor` is what ``model.predict``, ``adapters predict`` and ``adapters serve`` all
run. Its unit is a :class:`Job` — one decoded image, the heads asked of it and each head's
options — so one call can hold images from many requests that asked for DIFFERENT adapters
(the server's micro-batches) as well as many images that asked for the same ones (a folder).

For every input size, each adapter's rows (the images that asked for one of its heads) are
laid out contiguously and the whole batch runs through the base once, the LoRA bank applying
each adapter to its own slice; then every head reads its adapter's rows of the images that
asked for it. Heads of generative tasks run one adapter at a time (their decoder loops).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch


from .devices import available_cpus
from .errors import ConfigError, DataError, NotFoundError, suggest
from .inputs import ImageInput, check_readable, image_inputs
from .lora_runtime import Segment
from .results import ImageResult, TaskResult
from .task import option_names

if TYPE_CHECKING:
    from .multitask import HeadEntry, MultiTaskModel

DEFAULT_BATCH = 32
"""Rows per pass through the base: on a CPU, larger passes ran slower (bench/multitask.py)."""


@dataclass(frozen=True)
class Job:
    """One decoded image, the heads asked of it, and each head's parsed options (by head key)."""

    image: Any
    """An RGB PIL image."""
    heads: tuple[HeadEntry, ...]
    options: Mapping[str, Mapping[str, Any]]


def _options_key(options: Mapping[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=repr)


class Predictor:
    """Runs jobs on a :class:`~loradex.core.multitask.MultiTaskModel`; not thread-safe (one caller at a time)."""

    def __init__(self, model: MultiTaskModel) -> None:
        self.model = model

    # -- choosing heads and options ------------------------------------------------------------

    def chosen_heads(self, tasks: Sequence[str] | str | None) -> list[HeadEntry]:
        """The heads ``tasks`` name (refs, adapter names, head keys or task names); None: every head."""
        model = self.model
        entries = model.head_entries()
        if not entries:
            raise ConfigError("no adapters are attached; add one first")
        if tasks is None:
            return entries
        wanted = [tasks] if isinstance(tasks, str) else list(tasks)
        chosen: list[HeadEntry] = []
        for name in wanted:
            matches = [h for h in entries if h.key == name]
            if not matches:
                try:
                    matches = list(model.adapters[model.attached_key(name)].heads)
                except NotFoundError:
                    matches = [h for h in entries if h.task.name == name]
            if not matches:
                known = [h.key for h in entries]
                raise NotFoundError(f"no attached adapter or task {name!r}.{suggest(name, known)} "
                                    f"Attached: {', '.join(known)}")
            chosen.extend(h for h in matches if h not in chosen)
        return chosen

    @staticmethod
    def options_for(heads: Sequence[HeadEntry], options: Mapping[str, Any], *,
                    backbone: Any = None) -> dict[str, dict[str, Any]]:
        """Each head's validated prediction options: a plain key goes to every task that takes it.

        ``classification.top_k`` (task), ``cls.top_k`` (adapter name) or ``cls@v2.top_k`` (key)
        scope an option to some heads only. With ``backbone``, each task also checks its options
        against the base (:meth:`~loradex.core.task.Task.check_options`).
        """
        raw: dict[str, dict[str, Any]] = {h.key: {} for h in heads}
        for key, value in options.items():
            scope, dot, name = key.rpartition(".")
            targets = [h for h in heads if not dot or scope in (h.task.name, h.key, h.key.split("@", 1)[0])]
            if dot and not targets:
                raise ConfigError(f"option {key!r}: no chosen adapter or task is called {scope!r}")
            takers = [h for h in targets if name in option_names(h.task.predict_options)]
            if not takers:
                offered = {h.task.name: option_names(h.task.predict_options) for h in heads}
                listing = "; ".join(f"{t}: {', '.join(o) or 'none'}" for t, o in offered.items())
                every = [o for names in offered.values() for o in names]
                raise ConfigError(f"no chosen task takes the option {name!r}.{suggest(name, every)} Options: {listing}")
            for head in takers:
                raw[head.key][name] = value
        parsed = {h.key: h.task.parse_options(raw[h.key]) for h in heads}
        if backbone is not None:
            for head in heads:
                head.task.check_options(parsed[head.key], backbone)
        return parsed

    # -- the mixed pass ----------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job], *, batch_size: int = DEFAULT_BATCH) -> list[dict[str, dict[str, Any]]]:
        """Each job's predictions, keyed by head key in the job's order of heads.

        Every adapter's rows go through the base in ONE mixed pass per input size (at most
        ``batch_size`` rows at a time); each head then runs on the rows of the jobs that asked
        for it, once per distinct set of options.
        """
        out: list[dict[str, Any]] = [dict.fromkeys(h.key for h in job.heads) for job in jobs]
        if not jobs:
            return out
        heads: dict[str, HeadEntry] = {}
        for job in jobs:
            for head in job.heads:
                heads.setdefault(head.key, head)
        pixels: dict[tuple[int, int], torch.Tensor] = {}

        def pixels_of(index: int, image_size: int) -> torch.Tensor:
            if (index, image_size) not in pixels:
                pixels[index, image_size] = self.model.backbone.transform_at(image_size)(jobs[index].image)
            return pixels[index, image_size]

        for head in [h for h in heads.values() if h.task.generates]:
            for options, members in self._option_groups(jobs, head):
                batch = torch.stack([pixels_of(i, head.image_size) for i in members]).to(self.model.device)
                with torch.inference_mode():
                    outputs = head.task.generate(self.model.runner(head.key), self.model.backbone, batch,
                                                 head.config, **options)
                self._keep(out, jobs, head, members, options, outputs)
        dense = [h for h in heads.values() if not h.task.generates]
        for image_size in dict.fromkeys(h.image_size for h in dense):
            group = [h for h in dense if h.image_size == image_size]
            rows_of: dict[str, list[int]] = {}  # each adapter's jobs, in job order
            keys = {h.key for h in group}
            for index, job in enumerate(jobs):
                for lora in dict.fromkeys(h.lora for h in job.heads if h.key in keys):
                    rows_of.setdefault(lora, []).append(index)
            plan, order, start = [], [], 0
            for lora, members in rows_of.items():
                plan.append(Segment(lora, start, start + len(members)))
                order += members
                start += len(members)
            batch = torch.stack([pixels_of(i, image_size) for i in order])
            features = self.model.encode_rows(batch, plan, batch_size=batch_size)
            for head in group:
                segment = next(s for s in plan if s.adapter == head.lora)
                position = {job: segment.start + k for k, job in enumerate(rows_of[head.lora])}
                for options, members in self._option_groups(jobs, head):
                    rows = torch.tensor([position[i] for i in members], device=features.cls.device)
                    picked = features.select(rows)
                    with torch.inference_mode():
                        outputs = head.module(picked)
                    self._keep(out, jobs, head, members, options, outputs)
        return out

    @staticmethod
    def _option_groups(jobs: Sequence[Job], head: HeadEntry) -> list[tuple[dict[str, Any], list[int]]]:
        """The jobs that asked for ``head``, grouped by the options they gave it (job order kept)."""
        groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
        for index, job in enumerate(jobs):
            if any(h.key == head.key for h in job.heads):
                options = dict(job.options.get(head.key, {}))
                groups.setdefault(_options_key(options), (options, []))[1].append(index)
        return list(groups.values())

    @staticmethod
    def _keep(out: list[dict[str, Any]], jobs: Sequence[Job], head: HeadEntry, members: Sequence[int],
              options: Mapping[str, Any], outputs: Any) -> None:
        sizes = [jobs[i].image.size for i in members]
        predictions = head.task.postprocess(outputs, head.config, image_sizes=sizes, **options)
        for index, prediction in zip(members, predictions):
            out[index][head.key] = prediction

    # -- images in, results out ------------------------------------------------------------------

    def stream(self, images: Any, *, tasks: Sequence[str] | str | None = None, batch_size: int = DEFAULT_BATCH,
               skip_bad: bool = False, workers: int | None = None, **options: Any) -> Iterator[ImageResult]:
        """Every chosen task on every image, yielded batch by batch (see ``MultiTaskModel.stream``)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        heads = self.chosen_heads(tasks)
        per_head = self.options_for(heads, options, backbone=self.model.backbone)
        inputs = image_inputs(images)
        if not skip_bad:
            bad = check_readable(inputs)
            if bad:
                source, reason = next(iter(bad.items()))
                more = f" (and {len(bad) - 1} more; --skip-bad predicts the others)" if len(bad) > 1 else ""
                raise DataError(f"{source}: not a readable image ({reason}){more}")
        chunks = [inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size)]
        threads = available_cpus() if workers is None else workers
        if threads < 1 or len(chunks) < 2:
            for chunk in chunks:
                yield from self._predict_chunk(_load_chunk(chunk, None), heads, per_head,
                                               batch_size=batch_size, skip_bad=skip_bad)
            return
        # decode the next chunk (in `threads` threads: PIL frees the GIL) while this one runs through the model;
        # at most two chunks of images are in memory, however many inputs there are
        with ThreadPoolExecutor(threads) as decoders, ThreadPoolExecutor(1) as prefetch:
            ahead = prefetch.submit(_load_chunk, chunks[0], decoders)
            for index in range(len(chunks)):
                loaded = ahead.result()
                if index + 1 < len(chunks):
                    ahead = prefetch.submit(_load_chunk, chunks[index + 1], decoders)
                yield from self._predict_chunk(loaded, heads, per_head, batch_size=batch_size, skip_bad=skip_bad)

    def _predict_chunk(self, chunk: list[tuple[ImageInput, Any]], heads: list[HeadEntry],
                       per_head: dict[str, dict], *, batch_size: int, skip_bad: bool) -> list[ImageResult]:
        base = self.model.base_info
        results: list[ImageResult] = []
        loaded: list[tuple[ImageResult, Any]] = []
        for item, image in chunk:
            if isinstance(image, DataError):
                if not skip_bad:
                    raise image
                results.append(ImageResult(source=item.source, width=0, height=0, base=base, error=str(image),
                                           path=item.path))
                continue
            result = ImageResult(source=item.source, width=image.width, height=image.height, base=base,
                                 path=item.path, image=item.image)
            results.append(result)
            loaded.append((result, image))
        chosen = tuple(heads)
        jobs = [Job(image=image, heads=chosen, options=per_head) for _, image in loaded]
        for (result, _), predictions in zip(loaded, self.run(jobs, batch_size=batch_size)):
            result.results = task_results(predictions, {h.key: h for h in heads}, path=result.path,
                                          image=result.image)
        return results


def task_results(predictions: Mapping[str, dict[str, Any]], heads: Mapping[str, HeadEntry], *, path: Any = None,
                 image: Any = None) -> dict[str, TaskResult]:
    """One image's predictions (by head key) as :class:`TaskResult` objects, in the same order."""
    return {key: TaskResult(key=key, task=heads[key].task, prediction=prediction, head_config=heads[key].config,
                            path=path, image=image)
            for key, prediction in predictions.items()}


def _load_chunk(chunk: Sequence[ImageInput], pool: Any) -> list[tuple[ImageInput, Any]]:
    """Each input with its PIL image, or the DataError that reading it raised."""
    def load(item: ImageInput) -> tuple[ImageInput, Any]:
        try:
            return item, item.load()
        except DataError as exc:
            return item, exc

    return list(pool.map(load, chunk) if pool is not None else map(load, chunk))
