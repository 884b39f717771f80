"""`adapters train` and `adapters eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from loradex.core.errors import ConfigError

from .options import open_registry, print_json, read_config, settings_options, split_settings, stderr_console


def head_settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("kind=fcos", "levels=[8,16]")`` → ``{"kind": "fcos", "levels": [8, 16]}``, each value read as YAML."""
    import yaml

    from loradex.core.task import key_value_pairs

    settings: dict[str, Any] = {}
    for key, value in key_value_pairs(pairs, what="--head", example="--head kind=fcos").items():
        try:
            settings[key] = yaml.safe_load(value) if value else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--head {key}: {value!r} is not a YAML value ({error.problem})") from None
    return settings


@click.command(name="train")
@click.argument("task")
@click.option("--data", help="Dataset folder/file, or synthetic[:train=N,val=N,test=N,seed=N] (default: synthetic).")
@click.option("--backbone", help="Built-in preset, Hub id (org/name) or local folder (default: the base a plugin marks "
                                 "default for the task's kind, tiny-vit for image tasks).")
@click.option("--revision", help="Hub revision of the backbone to pin.")
@click.option("--name", help="Adapter name in the registry (default: the task name).")
@click.option("--init", "init", metavar="NAME[@VER]",
              help="Start from this adapter's LoRA (and its head, for the same task and labels): fine-tune it.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML file with any of these options; command-line flags win.")
@click.option("--head", "head_pairs", multiple=True, metavar="KEY=VALUE",
              help="A head setting, over the config file's head: (values read as YAML), e.g. --head kind=fcos "
                   "or --head levels=[8,16].")
@settings_options
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of run folders (default: runs).")
@click.option("--run-name", default=None, help="Run folder name inside PROJECT/TASK (default: train, train2, ...).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_command(task: str, config_file: Path | None, no_progress: bool, as_json: bool, head_pairs: tuple[str, ...],
                  **options: Any) -> None:
    """Train a LoRA adapter for TASK on the shared backbone and store it as NAME@vN."""
    from loradex.core import plugins
    from loradex.core.training import TrainRequest, train_adapter
    from loradex.registry.store.names import validate_name

    task_obj = plugins.get_task(task)  # unknown task: fail before reading anything
    config = read_config(config_file) if config_file else {}
    values = {**config, **{k: v for k, v in options.items() if v is not None}}
    name = values.get("name") or task_obj.name
    validate_name(name)
    lora, train, runtime = split_settings(values)
    registry = open_registry()
    registry.check_can_store(name, task_obj.name)  # a refused name or registry fails now, not after training
    init_ref = values.get("init")
    init_record = registry.resolve(init_ref) if init_ref else None
    request = TrainRequest(
        task=task_obj.name,
        data=values.get("data"),
        backbone=values.get("backbone"),
        revision=values.get("revision"),
        lora=lora,
        train=train,
        head={**(values.get("head") or {}), **head_settings(head_pairs)},
        project=Path(values.get("project") or "runs"),
        run_name=values.get("run_name") or "train",
        init=registry.materialize(init_record) if init_record else None,
        runtime=runtime,
    )
    outcome = train_adapter(request, progress=not no_progress)
    if outcome.artifact_dir is None:  # a non-main process of a distributed launch
        return
    record = registry.put(
        outcome.artifact_dir,
        name=name,
        kind="trained",
        parents=[init_record.ref] if init_record else [],
        args={"primary_metric": outcome.primary_metric, "run_dir": str(outcome.run_dir.resolve()),
              "data": request.data or "synthetic", "config": str(config_file) if config_file else None,
              **({"init": init_record.ref} if init_record else {})},
        metrics=outcome.metrics,
    )
    summary = {
        "adapter": record.ref,
        "task": task_obj.name,
        "run_dir": str(outcome.run_dir),
        "primary_metric": outcome.primary_metric,
        "metrics": outcome.metrics,
        "best_epoch": outcome.result.best_epoch,
        "seconds": round(outcome.result.seconds, 1),
        "size_bytes": record.size,
    }
    if as_json:
        print_json(summary)
        return
    console = stderr_console()
    value = outcome.metrics.get(outcome.primary_metric)
    shown = f"{outcome.primary_metric} {value:.4f}" if value is not None else "no metrics"
    console.print(f"[green]saved[/green] {record.ref}  ({shown}, {record.size / 1e6:.2f} MB) — run folder {outcome.run_dir}")
    click.echo(record.ref)


@click.command(name="eval")
@click.argument("ref")
@click.option("--data", help="Dataset to evaluate on (default: the task's synthetic data).")
@click.option("--split", type=click.Choice(["val", "test", "train"]), default=None,
              help="Split to evaluate (default: test if the data has one, else val).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True)
@click.option("--allow-base-mismatch", is_flag=True, help="Load even if the base fingerprint differs.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
def eval_command(ref: str, data: str | None, split: str | None, batch_size: int, project: Path,
                 allow_base_mismatch: bool, as_json: bool) -> None:
    """Evaluate adapter REF (NAME[@VERSION]) and write a report folder."""
    from loradex.core.inference import evaluate_dataset
    from loradex.core.runs import new_run_dir, write_json
    from loradex.registry.loading import load

    model = load([ref], registry=open_registry(), allow_base_mismatch=allow_base_mismatch)
    (attached,) = model.adapters.values()
    (head,) = attached.heads
    full_ref, record, task, key = attached.ref, attached, head.task, head.key
    backbone = model.backbone
    size = head.image_size
    task_data = task.read_data(data, backbone=backbone, image_size=size, seed=record.spec.train.seed)
    chosen = split or ("test" if task_data.test is not None else "val")
    dataset = getattr(task_data, chosen)
    if dataset is None or len(dataset) == 0:
        raise ConfigError(f"the data has no {chosen} split")
    for field, now in task_data.head_config.items():  # labels, keypoint names, skeleton, ...
        then = record.spec.head.get(field)
        if then is not None and now != then:
            raise ConfigError(f"{data or 'synthetic data'}: {field} {now} differ from the {field} {full_ref} "
                              f"was trained on ({then})")
    result, loss = evaluate_dataset(task, model, dataset, head_config=head.config, adapter=key,
                                    batch_size=batch_size)
    run_dir = new_run_dir(project, task.name, "eval")
    write_json(run_dir / "metrics.json", {"adapter": full_ref, "split": chosen, "loss": loss, "metrics": result.metrics})
    (run_dir / "report.txt").write_text(
        f"adapter: {full_ref}\ndata: {task_data.description}\nsplit: {chosen}\n\n" + task.report(result, record.spec.head)
    )
    task.plot(result, record.spec.head, run_dir)
    if as_json:
        print_json({"adapter": full_ref, "split": chosen, "loss": loss, "metrics": result.metrics, "run_dir": str(run_dir)})
        return
    stderr_console().print(f"{full_ref} on {chosen} ({len(dataset)} images) — report in {run_dir}")
    width = max(len(k) for k in result.metrics)
    for k, v in sorted(result.metrics.items()):
        click.echo(f"{k:<{width}}  {v:.4f}")


def register(cli: click.Group) -> None:
    """Add these commands to the root group."""
    for command in (train_command, eval_command):
        cli.add_command(command)
