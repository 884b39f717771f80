"""`adapters predict REF[,REF...] INPUT...`: every task on one shared base, one record per image."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .options import open_registry, stderr_console


def unique_drawing_path(folder: Path, source: str, taken: set[str]) -> Path:
    """``folder/STEM.png``, with ``_2``, ``_3`` … added when two inputs share a stem."""
    stem = Path(source).stem if not source.startswith("<") else "image"
    name, index = f"{stem}.png", 1
    while name in taken:
        index += 1
        name = f"{stem}_{index}.png"
    taken.add(name)
    return folder / name


@click.command(name="predict")
@click.argument("refs", metavar="REF[,REF...]")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array: one record per image with each task's predictions keyed by name@vN.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write ONE drawing per image, every task on it, into this folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per step, and rows per pass through the base.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N, mps (default: a GPU if there is one).")
@click.option("--skip-bad", is_flag=True, help="Predict the readable images and list the ones that are not.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Threads decoding the next batch while one runs (default: one per core; 0: none).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A task's prediction option, e.g. top_k=3 or detection.min_score=0.5 (see `adapters tasks`).")
@click.option("--allow-base-mismatch", is_flag=True, help="Load even if a base fingerprint differs.")
def predict_command(refs: str, inputs: tuple[str, ...], as_json: bool, save_dir: Path | None, batch_size: int,
                    device: str | None, skip_bad: bool, workers: int | None, option_pairs: tuple[str, ...],
                    allow_base_mismatch: bool) -> None:
    """Predict with one or more adapters on INPUT images (files, folders, globs).

    REF is NAME, NAME@vN or NAME@ALIAS; several comma-separated refs load their shared base
    once and run every image through every adapter in one pass per input size.
    """
    from loradex.core.errors import DataError
    from loradex.core.inputs import image_inputs
    from loradex.registry.loading import load, parse_refs

    from loradex.core.task import key_value_pairs

    options = key_value_pairs(option_pairs, what="option", example="-o top_k=3 or -o detection.min_score=0.5")
    ref_list = parse_refs(refs)
    images = image_inputs(list(inputs))  # missing files, empty folders, globs matching nothing: fail now
    from loradex.registry.loading import resolve

    registry = open_registry()
    records = [resolve(registry, ref) for ref in ref_list]  # unknown refs fail before the base loads; once each
    model = load(records, device=device, registry=registry, allow_base_mismatch=allow_base_mismatch)
    from loradex.core.threads import configure_threads

    configure_threads()
    stream = model.stream(images, batch_size=batch_size, skip_bad=skip_bad, workers=workers, **options)
    if save_dir:
        _writable_folder(save_dir)
    taken: set[str] = set()
    bad: list[tuple[str, str]] = []
    first = True
    progress = _progress(len(images), enabled=not as_json and len(images) > batch_size)
    with progress:
        job = progress.add_task("predict", total=len(images))
        for result in stream:
            progress.advance(job)
            if result.error:
                bad.append((result.source, result.error))
            if as_json:
                click.echo(("[\n" if first else ",\n") + _indent(json.dumps(result.to_dict(), indent=2)), nl=False)
                first = False
            elif not result.error:
                for key, task_result in result.results.items():
                    click.echo(f"{result.source}\t{key}\t{task_result.summary()}")
            if save_dir and not result.error:
                target = unique_drawing_path(save_dir, result.source, taken)
                try:
                    result.save(target)
                except OSError as exc:
                    raise DataError(f"{target}: cannot be written ({exc.strerror or exc})") from None
    if as_json:
        click.echo("[]" if first else "\n]")
    if bad:
        listing = "; ".join(f"{source} ({reason.split(': ', 1)[-1]})" for source, reason in bad[:10])
        click.echo(f"skipped {len(bad)} unreadable image{'s' if len(bad) != 1 else ''}: {listing}"
                   + (" ..." if len(bad) > 10 else ""), err=True)
        if len(bad) == len(images):
            raise DataError("none of the inputs could be read")


def _writable_folder(folder: Path) -> None:
    """Create ``folder`` and check a file can be written there, before any image is predicted."""
    from loradex.core.errors import DataError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".loradex-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"{folder}: cannot write drawings there ({exc.strerror or exc}); choose another --save") \
            from None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _progress(total: int, *, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=stderr_console(), disable=not enabled, transient=True)


def register(cli: click.Group) -> None:
    """Add ``predict`` to the root group."""
    cli.add_command(predict_command)
