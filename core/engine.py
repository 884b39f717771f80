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
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    settings = spec.train
    runtime = runtime or RuntimeSettings()
    if data.train is None or len(data.train) == 0:
        raise DataError("the training split is empty")
    if data.val is None or len(data.val) == 0:
        raise DataError("the validation split is empty: early stopping and the best epoch need one")
    mixed_precision = resolve_mixed_precision(settings.mixed_precision)
    from accelerate.utils import DataLoaderConfiguration

    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=settings.grad_accum,
        log_with="tensorboard" if log_dir else None,
        project_dir=str(log_dir) if log_dir else None,
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )
    if log_dir:
        accelerator.init_trackers("tensorboard", config=_flat_config(spec))
    set_seed(settings.seed)
    model = build_model(task, backbone, spec)
    if init is not None:
        load_initial_weights(model, task, spec, Path(init))
    lora_params, head_params = model.trainable_parameters()
    groups = [{"params": lora_params, "lr": settings.lr}, {"params": head_params, "lr": settings.head_lr or settings.lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=settings.weight_decay)
    if runtime.cache:
        _attach_caches(data, runtime.cache, say=say)
    if runtime.compile:
        model.encoder.compile()  # in place: parameter names (and so the saved adapter) stay the same
    if accelerator.device.type == "cuda" and backbone.is_convolutional:
        model.to(memory_format=torch.channels_last)  # what cuDNN's fastest conv kernels read
    loading = {"collate": task.collate, "workers": runtime.workers, "device": accelerator.device}
    train_loader = make_loader(data.train, batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                               sampler=task.train_sampler(data.train, settings), **loading)
    val_loader = make_loader(data.val, batch_size=settings.batch_size * 2, seed=settings.seed, **loading)
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = get_scheduler(
        settings.scheduler,
        optimizer,
        num_warmup_steps=int(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    monitor = settings.monitor or task.primary_metric
    greater = task.greater_is_better if monitor == task.primary_metric else not monitor.endswith("loss")
    history: list[EpochLog] = []
    best_value: float | None = None
    best_loss: float | None = None
    best_epoch, best_state, best_val = 0, None, None
    stale, stopped_early = 0, False
    seen, start, stepping = 0, time.perf_counter(), 0.0
    bar = _progress(progress and accelerator.is_main_process)
    with bar:
        job = bar.add_task("train", total=len(train_loader) * settings.epochs, status="")
        for epoch in range(1, settings.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            running, batches = 0.0, 0
            for batch in checked_batches(train_loader):
                with accelerator.accumulate(model):
                    loss, _ = task.step(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"training diverged in epoch {epoch}, batch {batches + 1}: the loss is {value}; nothing "
                        f"was stored. Lower the learning rate (--lr {settings.lr:g}) or check the data for bad labels")
                running += value
                batches += 1
                seen += batch["pixel_values"].shape[0]
                bar.update(job, advance=1, description=f"epoch {epoch}/{settings.epochs}",
                           status=f"loss {running / batches:.4f}")
            epoch_stepping = time.perf_counter() - epoch_start
            stepping += epoch_stepping
            val_result, val_loss = evaluate(task, model, val_loader, spec.head, accelerator=accelerator)
            if not math.isfinite(val_loss):
                raise TrainingDivergedError(f"training diverged in epoch {epoch}: the validation loss is {val_loss}; "
                                            f"nothing was stored. Lower the learning rate (--lr {settings.lr:g})")
            if monitor not in val_result.metrics and monitor != "val_loss":
                raise ConfigError(
                    f"monitor metric {monitor!r} is not reported by task {task.name!r}; "
                    f"it reports {', '.join(sorted(val_result.metrics))}, val_loss"
                )
            log = EpochLog(
                epoch=epoch,
                train_loss=running / max(batches, 1),
                val_loss=val_loss,
                lr=scheduler.get_last_lr()[0],
                seconds=time.perf_counter() - epoch_start,
                train_seconds=epoch_stepping,
                metrics=val_result.metrics,
            )
            history.append(log)
            accelerator.log(
                {"train/loss": log.train_loss, "val/loss": val_loss, "lr": log.lr,
                 **{f"val/{k}": v for k, v in val_result.metrics.items()}},
                step=epoch,
            )
            value = val_loss if monitor == "val_loss" else val_result.metrics[monitor]
            if _improved(value, best_value, greater, loss=val_loss, best_loss=best_loss):
                best_value, best_loss, best_epoch, best_val, stale = value, val_loss, epoch, val_result, 0
                best_state = _trainable_state(accelerator.unwrap_model(model))
            else:
                stale += 1
            if on_epoch and accelerator.is_main_process:
                on_epoch(log)
            if settings.patience is not None and stale >= settings.patience:
                stopped_early = True
                break
    seconds = time.perf_counter() - start
    unwrapped: TaskModel = accelerator.unwrap_model(model)
    if best_state is not None:
        _load_trainable_state(unwrapped, best_state)
    test_result = None
    if data.test is not None and len(data.test):
        test_loader = accelerator.prepare(make_loader(data.test, batch_size=settings.batch_size * 2, **loading))
        test_result, _ = evaluate(task, model, test_loader, spec.head, accelerator=accelerator)
    accelerator.end_training()
    unwrapped.eval()
    return TrainResult(
        model=unwrapped,
        history=history,
        best_epoch=best_epoch,
        val=best_val,
        test=test_result,
        stopped_early=stopped_early,
        seconds=seconds,
        images_per_second=seen / stepping if stepping else 0.0,
        mixed_precision=mixed_precision,
    )


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
