"""The task-agnostic training engine: LoRA on the frozen base, the head trained in full.

Built on accelerate, so ``accelerate launch -m loradex.registry.cli train ...`` or
``torchrun`` runs the same loop on several GPUs; mixed precision is chosen from the device.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .backbone import LoadedBackbone
from .data.loading import attach_cache, checked_batches, make_loader
from .errors import ConfigError, DataError, TrainingDivergedError
from .model import TaskModel, build_model
from .spec import AdapterSpec, RuntimeSettings
from .task import EvalResult, Task, TaskData


@dataclass
class EpochLog:
    """One row of results.csv."""

    epoch: int
    train_loss: float
    val_loss: float | None
    lr: float
    seconds: float
    """The whole epoch: training steps and the validation pass."""
    train_seconds: float = 0.0
    """The training steps alone, data loading included."""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a finished training run hands back."""

    model: TaskModel
    history: list[EpochLog]
    best_epoch: int
    val: EvalResult | None
    test: EvalResult | None
    stopped_early: bool
    seconds: float
    images_per_second: float  # of the training steps alone (data loading included, validation not)
    mixed_precision: str


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` → bf16 (or fp16) on a CUDA GPU, ``no`` elsewhere; explicit values are checked."""
    has_cuda = torch.cuda.is_available()
    if setting == "auto":
        if not has_cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if setting in ("fp16", "bf16") and not has_cuda:
        raise ConfigError(f"mixed_precision={setting} needs a CUDA GPU; use 'auto' or 'no' on this machine")
    return setting


def evaluate(
    task: Task,
    model: torch.nn.Module,
    loader: DataLoader,
    head_config: dict[str, Any],
    *,
    accelerator: Any = None,
    adapter: str | None = None,
) -> tuple[EvalResult, float]:
    """Metrics and mean loss of ``model`` (its adapter ``adapter``, if several) over ``loader``."""
    from .devices import to_device

    accumulator = task.metrics(head_config)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    device = getattr(model, "device", None) if accelerator is None else None
    with torch.inference_mode():
        for batch in checked_batches(loader):
            if device is not None:
                batch = {**batch, "targets": to_device(batch["targets"], device)}
            loss, outputs = task.validate(model, batch, adapter=adapter)
            targets = batch["targets"]
            n = batch["pixel_values"].shape[0]
            total += float(loss) * n
            count += n
            if accelerator is not None and accelerator.num_processes > 1:
                outputs, targets = accelerator.gather_for_metrics((outputs, targets))
            accumulator.update(outputs, targets)
    model.train(was_training)
    return accumulator.compute(), total / max(count, 1)


def _attach_caches(data: TaskData, kind: str, *, say: Callable[[str], None]) -> None:
    """Decode and resize each split's images once (``--cache ram|disk``), announcing what it takes."""
    from .home import loradex_home

    found = False
    for split in (data.train, data.val, data.test):
        if split is not None:
            found = attach_cache(split, kind=kind, folder=loradex_home() / "cache" / "images", say=say) or found
    if not found:
        say(f"cache: nothing to cache ({kind}): the data is in memory already, or its processor crops or pads")


def _improved(value: float, best: float | None, greater: bool, *, loss: float, best_loss: float | None) -> bool:
    """Better on the monitored metric; on a tie (a metric still flat at 0.0, say) a lower validation loss wins."""
    if best is None:
        return True
    if value == best:
        return best_loss is not None and loss < best_loss
    return value > best if greater else value < best


def train(
    task: Task,
    backbone: LoadedBackbone,
    spec: AdapterSpec,
    data: TaskData,
    *,
    log_dir: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochLog], None] | None = None,
    init: Path | None = None,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    runtime: RuntimeSettings | None = None,
) -> TrainResult:
    """Train the adapter ``spec`` describes on ``data``; keep the best epoch's weights.

    ``init`` is an adapter folder to start from: its LoRA weights, and its head when it is of
    the same task with the same head configuration (else the head starts fresh). ``runtime``:
    how this machine runs it (workers, cache, compile); the weights do not depend on it.
    """
    trainer = Trainer(task, backbone, spec, data, log_dir=log_dir, on_epoch=on_epoch, say=say,
                      runtime=runtime or RuntimeSettings())
    trainer.set_up(init=init)
    return trainer.fit(progress=progress)


@dataclass
class _Best:
    """The best epoch so far: its monitored value, validation loss and result, and the trainable weights."""

    value: float | None = None
    loss: float | None = None
    epoch: int = 0
    val: EvalResult | None = None
    state: dict[str, torch.Tensor] | None = None
    stale: int = 0


class Trainer:
    """The training loop in steps: :meth:`set_up`, then :meth:`fit` runs :meth:`train_epoch`,
    :meth:`validate` and :meth:`keep_best` per epoch and :meth:`finish` once (``on_epoch``: the callback)."""

    def __init__(self, task: Task, backbone: LoadedBackbone, spec: AdapterSpec, data: TaskData, *,
                 log_dir: Path | None, on_epoch: Callable[[EpochLog], None] | None, say: Callable[[str], None],
                 runtime: RuntimeSettings) -> None:
        if data.train is None or len(data.train) == 0:
            raise DataError("the training split is empty")
        if data.val is None or len(data.val) == 0:
            raise DataError("the validation split is empty: early stopping and the best epoch need one")
        self.task, self.backbone, self.spec, self.data = task, backbone, spec, data
        self.settings, self.runtime = spec.train, runtime
        self.log_dir, self.on_epoch, self.say = log_dir, on_epoch, say
        self.monitor = self.settings.monitor or task.primary_metric
        self.greater = task.greater_is_better if self.monitor == task.primary_metric else not self.monitor.endswith("loss")
        self.history: list[EpochLog] = []
        self.best = _Best()
        self.seen, self.stepping = 0, 0.0

    def set_up(self, *, init: Path | None = None) -> None:
        """The accelerator, the model (from ``init`` if given), optimiser, loaders and scheduler."""
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, set_seed

        settings, runtime = self.settings, self.runtime
        self.mixed_precision = resolve_mixed_precision(settings.mixed_precision)
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision, gradient_accumulation_steps=settings.grad_accum,
            log_with="tensorboard" if self.log_dir else None,
            project_dir=str(self.log_dir) if self.log_dir else None,
            dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        )
        if self.log_dir:
            self.accelerator.init_trackers("tensorboard", config=_flat_config(self.spec))
        set_seed(settings.seed)
        model = build_model(self.task, self.backbone, self.spec)
        if init is not None:
            load_initial_weights(model, self.task, self.spec, Path(init))
        lora_params, head_params = model.trainable_parameters()
        groups = [{"params": lora_params, "lr": settings.lr},
                  {"params": head_params, "lr": settings.head_lr or settings.lr}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=settings.weight_decay)
        if runtime.cache:
            _attach_caches(self.data, runtime.cache, say=self.say)
        if runtime.compile:
            model.encoder.compile()  # in place: parameter names (and so the saved adapter) stay the same
        if self.accelerator.device.type == "cuda" and self.backbone.is_convolutional:
            model.to(memory_format=torch.channels_last)  # what cuDNN's fastest conv kernels read
        self._prepare(model, optimizer)

    def _prepare(self, model: TaskModel, optimizer: torch.optim.Optimizer) -> None:
        from transformers import get_scheduler

        settings = self.settings
        self.loading = {"collate": self.task.collate, "workers": self.runtime.workers,
                        "device": self.accelerator.device}
        augmented = self.task.augment(self.data.train, settings, head_config=self.data.head_config)
        train_loader = make_loader(augmented, batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                                   sampler=self.task.train_sampler(self.data.train, settings), **self.loading)
        val_loader = make_loader(self.data.val, batch_size=settings.batch_size * 2, seed=settings.seed, **self.loading)
        total_steps = math.ceil(len(train_loader) / settings.grad_accum) * settings.epochs
        scheduler = get_scheduler(settings.scheduler, optimizer, num_training_steps=total_steps,
                                  num_warmup_steps=int(settings.warmup_ratio * total_steps))
        (self.model, self.optimizer, self.train_loader, self.val_loader,
         self.scheduler) = self.accelerator.prepare(model, optimizer, train_loader, val_loader, scheduler)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def fit(self, *, progress: bool = True) -> TrainResult:
        """Every epoch until the last or early stopping; the best epoch's weights are kept."""
        start, stopped_early = time.perf_counter(), False
        epochs = self.settings.epochs
        with _progress(progress and self.accelerator.is_main_process) as bar:
            job = bar.add_task("train", total=len(self.train_loader) * epochs, status="")
            for epoch in range(1, epochs + 1):
                epoch_start = time.perf_counter()
                train_loss = self.train_epoch(epoch, bar=bar, job=job)
                epoch_stepping = time.perf_counter() - epoch_start
                self.stepping += epoch_stepping
                val_result, val_loss = self.validate(epoch)
                log = EpochLog(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                               lr=self.scheduler.get_last_lr()[0], seconds=time.perf_counter() - epoch_start,
                               train_seconds=epoch_stepping, metrics=val_result.metrics)
                self.history.append(log)
                self.accelerator.log({"train/loss": log.train_loss, "val/loss": val_loss, "lr": log.lr,
                                      **{f"val/{k}": v for k, v in val_result.metrics.items()}}, step=epoch)
                self.keep_best(epoch, val_result, val_loss)
                if self.on_epoch and self.accelerator.is_main_process:
                    self.on_epoch(log)
                if self.settings.patience is not None and self.best.stale >= self.settings.patience:
                    stopped_early = True
                    break
        return self.finish(seconds=time.perf_counter() - start, stopped_early=stopped_early)

    def train_epoch(self, epoch: int, *, bar: Any, job: Any) -> float:
        """One pass over the training split; its mean loss. A non-finite loss stops training."""
        model, accelerator, settings = self.model, self.accelerator, self.settings
        model.train()
        running, batches = 0.0, 0
        for batch in checked_batches(self.train_loader):
            with accelerator.accumulate(model):
                loss, _ = self.task.step(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(self.trainable, 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch}, batch {batches + 1}: the loss is {value}; nothing "
                    f"was stored. Lower the learning rate (--lr {settings.lr:g}) or check the data for bad labels")
            running += value
            batches += 1
            self.seen += batch["pixel_values"].shape[0]
            bar.update(job, advance=1, description=f"epoch {epoch}/{settings.epochs}",
                       status=f"loss {running / batches:.4f}")
        return running / max(batches, 1)

    def validate(self, epoch: int) -> tuple[EvalResult, float]:
        """Metrics and loss on the validation split; a non-finite loss or an unknown monitor stops training."""
        val_result, val_loss = evaluate(self.task, self.model, self.val_loader, self.spec.head,
                                        accelerator=self.accelerator)
        if not math.isfinite(val_loss):
            raise TrainingDivergedError(f"training diverged in epoch {epoch}: the validation loss is {val_loss}; "
                                        f"nothing was stored. Lower the learning rate (--lr {self.settings.lr:g})")
        if self.monitor not in val_result.metrics and self.monitor != "val_loss":
            raise ConfigError(f"monitor metric {self.monitor!r} is not reported by task {self.task.name!r}; "
                              f"it reports {', '.join(sorted(val_result.metrics))}, val_loss")
        return val_result, val_loss

    def keep_best(self, epoch: int, val_result: EvalResult, val_loss: float) -> None:
        """Remember this epoch's weights if it beats the best so far on the monitored metric."""
        best = self.best
        value = val_loss if self.monitor == "val_loss" else val_result.metrics[self.monitor]
        if _improved(value, best.value, self.greater, loss=val_loss, best_loss=best.loss):
            self.best = _Best(value=value, loss=val_loss, epoch=epoch, val=val_result,
                              state=_trainable_state(self.accelerator.unwrap_model(self.model)))
        else:
            best.stale += 1

    def finish(self, *, seconds: float, stopped_early: bool) -> TrainResult:
        """The best epoch's weights loaded back, the test split measured, the result handed back."""
        unwrapped: TaskModel = self.accelerator.unwrap_model(self.model)
        if self.best.state is not None:
            _load_trainable_state(unwrapped, self.best.state)
        test_result = None
        if self.data.test is not None and len(self.data.test):
            loader = make_loader(self.data.test, batch_size=self.settings.batch_size * 2, **self.loading)
            test_result, _ = evaluate(self.task, self.model, self.accelerator.prepare(loader), self.spec.head,
                                      accelerator=self.accelerator)
        self.accelerator.end_training()
        unwrapped.eval()
        return TrainResult(model=unwrapped, history=self.history, best_epoch=self.best.epoch, val=self.best.val,
                           test=test_result, stopped_early=stopped_early, seconds=seconds,
                           images_per_second=self.seen / self.stepping if self.stepping else 0.0,
                           mixed_precision=self.mixed_precision)


def load_initial_weights(model: TaskModel, task: Task, spec: AdapterSpec, folder: Path) -> bool:
    """Copy the LoRA (and, if it fits, the head) of the adapter in ``folder`` into a fresh model.

    Returns whether the head was loaded too.
    """
    from peft import set_peft_model_state_dict

    from .artifact import HEAD_WEIGHTS, load_weights, read_lora, read_spec

    start = read_spec(folder)
    _, state = read_lora(folder, model.backbone)
    result = set_peft_model_state_dict(model.encoder, state, adapter_name="default")
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ConfigError(f"{folder}: its LoRA does not fit this model ({unexpected[0]} has no place)")
    if start.task != task.name or start.head != spec.head:
        return False
    model.heads["default"].load_state_dict(load_weights(folder / HEAD_WEIGHTS))
    return True


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device))


def _flat_config(spec: AdapterSpec) -> dict[str, Any]:
    flat: dict[str, Any] = {"task": spec.task, "backbone": spec.backbone.name}
    data = spec.to_dict()
    for section in ("lora", "train"):
        for key, value in data[section].items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
        transient=False,
    )
