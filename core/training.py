"""One training run end to end: settings → data → engine → run folder → adapter artifact.

This is what ``adapters train`` calls; storing the artifact in the registry is the caller's
job (core knows nothing of the registry).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plugins
from .artifact import save_artifact
from .backbone import LoadedBackbone
from .data.datasets import take
from .engine import EpochLog, TrainResult, resolve_mixed_precision, train
from .inference import draw_samples
from .runs import check_run_location, new_run_dir, plot_training_curves, write_json, write_results_csv, write_yaml
from .errors import ConfigError
from .spec import AUGMENTATIONS, RUNTIME_FIELDS, AdapterSpec, LoraSettings, RuntimeSettings, TrainSettings, settings_from_mapping
from .task import HeadContext, Task, TaskData


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """What the user asked for; anything left out comes from the task's defaults."""

    task: str
    data: str | None = None
    backbone: str | None = None
    revision: str | None = None
    lora: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    head: Mapping[str, Any] = field(default_factory=dict)
    project: Path = Path("runs")
    run_name: str = "train"
    init: Path | None = None
    """An adapter folder to start from: its LoRA weights (and its head, for the same task and labels)."""
    runtime: Mapping[str, Any] = field(default_factory=dict)
    """:class:`~loradex.core.spec.RuntimeSettings` overrides (workers, cache, compile): how this machine
    runs the job, not stored with the adapter. Given in ``train`` (as before they moved) they count too."""


@dataclass
class TrainOutcome:
    """A finished run: where it was written, the adapter's spec and its metrics."""

    run_dir: Path | None
    """None on the non-main processes of a multi-process (accelerate/torchrun) run."""
    artifact_dir: Path | None
    spec: AdapterSpec
    metrics: dict[str, float]
    result: TrainResult
    data_description: str
    primary_metric: str


def resolve_settings(task: Task, request: TrainRequest, backbone: LoadedBackbone | None = None,
                     ) -> tuple[LoraSettings, TrainSettings]:
    """The task's defaults overridden by the request, validated before anything is loaded.

    With ``backbone`` (once it is loaded) the defaults fit it: its own LoRA targets, and the
    task's :meth:`~loradex.core.task.Task.pretrained_defaults` on a pretrained base. Starting
    from an adapter (``request.init``), its LoRA settings are kept: they define the weights
    being continued.
    """
    fitted = _fitted_defaults(task, backbone)
    if request.init is not None:
        kept = dataclasses.replace(init_spec(request.init).lora, target_modules=None, token_indices=())
        asked = settings_from_mapping(LoraSettings, {**dataclasses.asdict(kept), **request.lora}, source="lora settings")
        changed = sorted(k for k in request.lora if k != "dropout" and getattr(asked, k) != getattr(kept, k))
        if changed:
            tokens = f", tokens {','.join(kept.tokens)}" if kept.tokens else ""
            raise ConfigError(f"--{changed[0]} cannot change when training starts from {request.init} "
                              f"(its LoRA has rank {kept.rank}, targets {','.join(kept.targets)}{tokens})")
        base = dataclasses.asdict(kept)
    else:
        base = {**dataclasses.asdict(task.default_lora()), **fitted["lora"]}
    lora = settings_from_mapping(LoraSettings, {**base, **request.lora}, source="lora settings")
    defaults = {**dataclasses.asdict(task.default_train(request.backbone or task.default_backbone())), **fitted["train"]}
    asked = {k: v for k, v in request.train.items() if k not in RUNTIME_FIELDS}
    train = settings_from_mapping(TrainSettings, {**defaults, **asked}, source="train settings")
    return lora, train


def resolve_runtime(request: TrainRequest) -> RuntimeSettings:
    """The request's runtime settings (``runtime``, and the same keys in ``train`` as before they moved)."""
    moved = {k: v for k, v in request.train.items() if k in RUNTIME_FIELDS}
    return settings_from_mapping(RuntimeSettings, {**moved, **request.runtime}, source="runtime settings")


def _fitted_defaults(task: Task, backbone: LoadedBackbone | None) -> dict[str, dict[str, Any]]:
    fitted: dict[str, dict[str, Any]] = {"lora": {}, "train": {}, "head": {}}
    if backbone is None:
        return fitted
    if backbone.default_targets:
        fitted["lora"]["targets"] = backbone.default_targets
    if backbone.pretrained:
        for key, values in task.pretrained_defaults(backbone).items():
            if key not in fitted:
                raise ConfigError(f"task {task.name!r}: pretrained_defaults() key {key!r} is not lora, train or head")
            fitted[key].update(values)
    return fitted


def _check_cpu(say: Callable[[str], None]) -> None:
    """Fit torch's threads to this machine and warn when another process is busy on its cores."""
    import torch

    from .threads import competing_process, configure_threads

    configure_threads()
    if not torch.cuda.is_available() and is_main_process():
        warning = competing_process()
        if warning:
            say(f"warning: {warning}")


def init_spec(folder: Path) -> AdapterSpec:
    """The spec of the adapter training starts from; it must be a single-task adapter folder."""
    from .artifact import check_complete

    spec = check_complete(Path(folder))
    if spec.is_multitask:
        raise ConfigError(f"{folder}: a multi-task adapter; start from a single-task one")
    return spec


def build_spec(
    task: Task, backbone: LoadedBackbone, data: TaskData, request: TrainRequest,
    lora: LoraSettings, train: TrainSettings,
) -> AdapterSpec:
    """The spec of the adapter to train, with LoRA targets resolved on ``backbone``."""
    image_size = train.image_size or backbone.image_size
    return AdapterSpec(
        task=task.name,
        backbone=backbone.ref,
        lora=dataclasses.replace(lora, target_modules=backbone.target_modules(lora.targets),
                                 token_indices=backbone.token_indices(lora.tokens) if lora.tokens else ()),
        # the data's head config (labels, and the head a reader records) before the base's needs
        head={**task.default_head(), **data.head_config, **task.head_defaults(HeadContext.of(backbone, image_size)),
              **_fitted_defaults(task, backbone)["head"], **request.head},
        train=train,
        image_size=image_size,
        plugins={task.name: made_by} if (made_by := plugins.provider(task.name)) else {},
    )


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def flat_metrics(result: TrainResult) -> dict[str, float]:
    """Validation metrics of the best epoch, and test metrics prefixed ``test_``."""
    metrics = dict(result.val.metrics) if result.val else {}
    if result.test:
        metrics.update({f"test_{k}": v for k, v in result.test.metrics.items()})
    return metrics


def _guard(say: Callable[[str], None], what: str, step: Callable[[], Any]) -> Any:
    """Run a task's ``report``/``plot``/``draw`` step; a fault in it is a warning, not a lost run."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - a plugin's bug, reported by name
        import os
        import traceback

        say(f"Warning: the task's {what} failed ({type(exc).__name__}: {exc}); the adapter is saved"
            + ("" if os.environ.get("LORADEX_DEBUG") else " (LORADEX_DEBUG=1 shows the traceback)"))
        if os.environ.get("LORADEX_DEBUG"):
            say(traceback.format_exc())
        return None


def train_adapter(
    request: TrainRequest,
    *,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> TrainOutcome:
    """Run one training job and write its run folder and adapter artifact."""
    task = plugins.get_task(request.task)
    lora, settings = resolve_settings(task, request)
    runtime = resolve_runtime(request)
    check_run_location(request.project, request.run_name)  # before anything is loaded or written
    resolve_mixed_precision(settings.mixed_precision)
    backbone, revision = _load_base(task, request, say)
    lora, settings = resolve_settings(task, request, backbone)  # the defaults that fit this base
    data = _read_data(task, request, backbone, settings, say)
    spec = build_spec(task, backbone, data, request, lora, settings)
    task.head_for(backbone, head_config=spec.head, image_size=spec.image_size)  # a bad head setting fails before the run folder
    if not is_main_process():  # under accelerate launch / torchrun only rank 0 writes anything
        result = train(task, backbone, spec, data, progress=False, init=request.init, runtime=runtime)
        return TrainOutcome(run_dir=None, artifact_dir=None, spec=spec, metrics=flat_metrics(result), result=result,
                            data_description=data.description, primary_metric=task.primary_metric)

    run_dir = new_run_dir(request.project, task.name, request.run_name)
    say(f"run folder: {run_dir}")
    resolved = spec.to_dict()
    write_yaml(run_dir / "args.yaml", {
        "task": task.name, "data": request.data or "synthetic", "backbone": backbone.ref.name,
        "revision": revision, "init": str(request.init) if request.init else None, **resolved["lora"], **resolved["train"],
        "head": spec.head, "runtime": dataclasses.asdict(runtime),  # this run's machine settings: here, not in the adapter
    })

    def on_epoch(log: EpochLog) -> None:
        shown = {k: v for k, v in log.metrics.items() if k == task.primary_metric or k in ("accuracy",)}
        parts = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
        say(f"epoch {log.epoch}/{spec.train.epochs}  train_loss {log.train_loss:.4f}  "
            f"val_loss {log.val_loss:.4f}  {parts}  {log.seconds:.1f}s")

    result = train(task, backbone, spec, data, log_dir=run_dir / "tensorboard", progress=progress, on_epoch=on_epoch,
                   init=request.init, say=say, runtime=runtime)
    metrics = flat_metrics(result)
    artifact_dir = _write_run(run_dir, task, spec, data, result, metrics, say)
    return TrainOutcome(run_dir=run_dir, artifact_dir=artifact_dir, spec=spec, metrics=metrics, result=result,
                        data_description=data.description, primary_metric=task.primary_metric)


def _load_base(task: Task, request: TrainRequest, say: Callable[[str], None]) -> tuple[LoadedBackbone, str | None]:
    """(the base to train on, its revision): the request's, the ``init`` adapter's, or the task's default."""
    start = init_spec(request.init) if request.init is not None else None
    backbone_name = request.backbone or (start.backbone.name if start else task.default_backbone())
    revision = request.revision or (start.backbone.revision if start else None)
    if request.backbone is None and start is None:
        say(f"backbone: none given, using the built-in preset {backbone_name!r}")
    _check_cpu(say)
    backbone = plugins.resolve_backbone(backbone_name).load(backbone_name, revision=revision)
    if backbone.kind != task.requires:
        raise ConfigError(f"task {task.name!r} needs an {task.requires} base; {backbone_name!r} is an {backbone.kind} "
                          f"(try --backbone {task.default_backbone()})")
    if start is not None:
        from .artifact import check_fingerprint

        check_fingerprint(start, backbone.ref.fingerprint, where=str(request.init), allow_mismatch=False,
                          cure=f"train from it on its own base (--backbone {start.backbone.name}), or start "
                               "without --init")
    return backbone, revision


def _read_data(task: Task, request: TrainRequest, backbone: LoadedBackbone, settings: TrainSettings,
               say: Callable[[str], None]) -> TaskData:
    """The request's data at the training size, checked against the base, cut to ``max_train_samples``."""
    image_size = settings.image_size or backbone.image_size
    data = task.read_data(request.data, backbone=backbone, image_size=image_size, seed=settings.seed)
    say(f"data: none given, using built-in {data.description}" if request.data is None else f"data: {data.description}")
    for name in AUGMENTATIONS:
        if name in request.train and name not in task.augmentations:  # asked for, by flag, config or request
            say(f"warning: task {task.name!r} does not apply {name} (it trains on the images as they are); "
                f"{'it applies ' + ', '.join(task.augmentations) if task.augmentations else 'it applies none'}")
    limit = settings.max_train_samples
    if limit is not None and data.train is not None and len(data.train) > limit:
        say(f"data: training on {limit} of the {len(data.train)} training images (max_train_samples, drawn with "
            f"seed {settings.seed})")
        data.train = take(data.train, limit, seed=settings.seed)
    return data


def _write_run(run_dir: Path, task: Task, spec: AdapterSpec, data: TaskData, result: TrainResult,
               metrics: dict[str, float], say: Callable[[str], None]) -> Path:
    """results.csv, metrics.json, the adapter, report.txt, plots and drawings; returns the adapter folder."""
    write_results_csv(run_dir / "results.csv", result.history)
    write_json(run_dir / "metrics.json", {
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2), "images_per_second": round(result.images_per_second, 1),
        "mixed_precision": result.mixed_precision, "metrics": metrics,
    })
    # the adapter first: a fault in a plugin's report, plot or drawing must not lose a trained adapter
    artifact_dir = save_artifact(result.model, spec, run_dir / "adapter", metrics=metrics)
    report = [f"task: {task.name}", f"data: {data.description}",
              f"backbone: {spec.backbone.name} ({spec.backbone.fingerprint})",
              f"best epoch: {result.best_epoch} of {len(result.history)}"
              + (" (stopped early)" if result.stopped_early else ""), ""]
    if result.val:
        report += ["validation", "----------", _guard(say, "report", lambda: task.report(result.val, spec.head)) or ""]
        _guard(say, "plot", lambda: task.plot(result.val, spec.head, run_dir))
    if result.test:
        report += ["test", "----", _guard(say, "report", lambda: task.report(result.test, spec.head)) or ""]
    (run_dir / "report.txt").write_text("\n".join(report), encoding="utf-8")
    plot_training_curves(result.history, run_dir, metric=task.primary_metric)
    _guard(say, "draw", lambda: draw_samples(task, result.model, data.val, run_dir / "predictions"))
    return artifact_dir
