"""Numbered run folders (runs/TASK/train, train2, ...) and what goes in them."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .engine import EpochLog


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_location(project: Path, name: str) -> None:
    """Refuse a run name that is not a plain folder name, or a project folder that cannot exist."""
    from .errors import ConfigError

    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"run name {name!r} must be a plain folder name: letters, digits, '.', '_' or '-', "
                          "no '/' or '..'")
    for folder in [Path(project), *Path(project).parents]:
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"project folder {project} cannot be created: {folder} is a file")
            break


def new_run_dir(project: Path, task: str, name: str = "train") -> Path:
    """Create and return the next free ``project/task/name{,2,3,...}`` folder."""
    check_run_location(project, name)
    parent = Path(project) / task
    parent.mkdir(parents=True, exist_ok=True)
    taken = {p.name for p in parent.iterdir()}
    pattern = re.compile(rf"^{re.escape(name)}(\d*)$")
    numbers = [int(m.group(1) or 1) for t in taken if (m := pattern.match(t))]
    index = max(numbers, default=0) + 1
    while True:
        folder = parent / (name if index == 1 else f"{name}{index}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # another run took it in the meantime
            index += 1


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as YAML (the run's resolved arguments)."""
    import yaml

    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def write_results_csv(path: Path, history: Sequence[EpochLog]) -> Path:
    """One row per epoch: losses, learning rate, seconds (all, and of the training steps) and every val metric."""
    metric_names = sorted({k for log in history for k in log.metrics})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss", "lr", "seconds", "train_seconds",
                         *(f"val_{m}" for m in metric_names)])
        for log in history:
            writer.writerow(
                [log.epoch, f"{log.train_loss:.6f}", "" if log.val_loss is None else f"{log.val_loss:.6f}",
                 f"{log.lr:.6g}", f"{log.seconds:.2f}", f"{log.train_seconds:.2f}",
                 *(f"{log.metrics.get(m, float('nan')):.6f}" for m in metric_names)]
            )
    return path


def plot_training_curves(history: Sequence[EpochLog], out_dir: Path, *, metric: str) -> Path:
    """loss_curves.png: train/val loss and the monitored validation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [log.epoch for log in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [log.train_loss for log in history], marker="o", label="train")
    left.plot(epochs, [log.val_loss for log in history], marker="o", label="val")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title("Loss")
    left.legend()
    right.plot(epochs, [log.metrics.get(metric, float("nan")) for log in history], marker="o", color="tab:green")
    right.set_xlabel("epoch")
    right.set_title(f"val {metric}")
    fig.tight_layout()
    path = out_dir / "loss_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
