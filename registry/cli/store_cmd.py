"""`adapters list/show/tag/untag/rm/import/export/verify`: the registry's commands.

Only presentation lives here; every operation is a :class:`loradex.registry.store.registry.Registry`
call. The store is imported inside each command so that ``adapters --help`` stays fast.
Data (tables, ``--json``) goes to stdout; notes go to stderr; user mistakes raise
:class:`~loradex.core.errors.LoradexError`, which the root group prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from loradex.registry.store.registry import LineageNode, Registry, VersionRecord


def _home() -> str | None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    obj = ctx.find_root().obj
    return obj.get("home") if isinstance(obj, dict) else None


def open_registry() -> Registry:
    """The registry named by the root group's ``--home`` (else ``$LORADEX_HOME`` / the default)."""
    from loradex.registry.store.registry import Registry

    return Registry.open(_home())


def human_size(n: int | None) -> str:
    """``1536`` → ``1.5 KB``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


def _console(*, stderr: bool = False):
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() else 200  # piped output: do not wrap tables at 80 columns
    return Console(file=stream, highlight=False, soft_wrap=False, width=wide)


def _note(message: str) -> None:
    click.echo(message, err=True)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False))


def _metric(name: str | None, value: float | None) -> str:
    if not name:
        return "-"
    return f"{name} {value:.4f}" if value is not None else f"{name} -"


@click.command("list")
@click.option("--task", default=None, help="Only adapters of this task.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout instead of a table.")
def list_cmd(task: str | None, as_json: bool) -> None:
    """List adapters: versions, aliases, task, base, size and headline metric."""
    with open_registry() as reg:
        rows = reg.list(task=task)
        missing = _tasks_not_installed(reg, rows)
        if as_json:
            _echo_json([{**row.to_dict(), "tasks_not_installed": missing.get(row.name, [])} for row in rows])
            return
        if not rows:
            _note(f"No adapters{' for task ' + task if task else ''} in {reg.root}.")
            return
        from rich.table import Table

        table = Table(title=f"adapters in {reg.root}", title_justify="left")
        for col in ("name", "versions", "aliases", "task", "base", "size", "metric"):
            table.add_column(col, justify="right" if col in ("versions", "size") else "left")
        for row in rows:
            aliases = ", ".join(f"{a}→v{v}" for a, v in row.aliases.items()) or "-"
            table.add_row(
                row.name, f"{row.versions} (latest v{row.latest})", aliases,
                row.task + (f" [red](not installed: {', '.join(missing[row.name])})[/red]" if row.name in missing else ""),
                row.base,
                human_size(row.size), _metric(row.headline_metric, row.headline_value),
            )
        _console().print(table)


def _tasks_not_installed(reg: Any, rows: list[Any]) -> dict[str, list[str]]:
    """Adapter name → the tasks of its latest version that no installed plugin provides."""
    from loradex.core import plugins

    installed = set(plugins.get_tasks())
    missing = {}
    for row in rows:
        tasks = reg.resolve(f"{row.name}@v{row.latest}").spec.tasks if row.task == "multitask" else (row.task,)
        absent = [t for t in tasks if t not in installed]
        if absent:
            missing[row.name] = absent
    return missing


def _lineage_tree(node: LineageNode):
    from rich.tree import Tree

    def label(n: LineageNode) -> str:
        if n.record is None:
            return f"{n.ref} [dim](removed)[/dim]"
        args = ", ".join(f"{k}={v}" for k, v in sorted(n.record.args.items()))
        return f"[bold]{n.ref}[/bold] {n.kind}" + (f" [dim]({args})[/dim]" if args else "")

    levels = [Tree(label(node))]  # the walk's depths give each ancestor its branch
    for ancestor, depth in node.ancestors():
        del levels[depth:]
        levels.append(levels[depth - 1].add(label(ancestor)))
    return levels[0]


@click.command("show")
@click.argument("ref", metavar="NAME[@VER]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def show_cmd(ref: str, as_json: bool) -> None:
    """Show one version: spec, metrics, lineage, files with sizes and hashes."""
    with open_registry() as reg:
        record = reg.resolve(ref)
        lineage = reg.lineage(record)
        versions = reg.versions(record.name)
        if as_json:
            data = record.to_dict()
            data["lineage"] = lineage.to_dict()
            data["versions"] = [
                {"version": v.version, "kind": v.kind, "created": v.created, "aliases": list(v.aliases)}
                for v in versions
            ]
            _echo_json(data)
            return
        _print_record(record, lineage, versions)


def _print_record(record: VersionRecord, lineage: LineageNode, versions: list[VersionRecord]) -> None:
    from rich.table import Table

    console = _console()
    spec = record.spec
    latest = versions[-1].version if versions else record.version
    aliases = list(record.aliases) + (["latest"] if record.version == latest else [])
    console.print(f"[bold]{record.ref}[/bold]  {record.task}  ({record.kind}, {record.created})")
    console.print(f"aliases: {', '.join(aliases) or '-'}   size: {human_size(record.size)}")
    console.print(f"base: {spec.backbone.name}"
                  + (f"@{spec.backbone.revision}" if spec.backbone.revision else "")
                  + f"  fingerprint: {spec.backbone.fingerprint or 'unknown'}")
    console.print(f"LoRA: {spec.lora.describe()}", markup=False)
    if spec.is_multitask:
        for head in spec.heads:
            console.print(f"head {head.name}: {head.task} at {head.image_size}px " + json.dumps(head.config, sort_keys=True))
    elif spec.head:
        console.print("head: " + json.dumps(spec.head, sort_keys=True))
    measured = record.args.get("measured")
    if isinstance(measured, list) and measured:
        kept = Table(title=f"{record.kind}: each input's metric on its own validation data", title_justify="left")
        for col in ("input", "metric", "before", "after", "retained"):
            kept.add_column(col, justify="left" if col in ("input", "metric") else "right")
        for m in measured:
            fmt = lambda v, spec=".4f": "-" if v is None else format(v, spec)  # noqa: E731
            kept.add_row(m["input"], m["metric"], fmt(m.get("before")), fmt(m.get("after")),
                         "not measured: " + m["note"] if m.get("retained") is None and m.get("note") else
                         fmt(m.get("retained"), ".1f") + ("%" if m.get("retained") is not None else ""))
        console.print(kept)
    if record.metrics:
        metrics = Table(title="metrics", title_justify="left")
        metrics.add_column("metric")
        metrics.add_column("value", justify="right")
        for key, value in sorted(record.metrics.items()):
            metrics.add_row(key + (" *" if key == record.headline_metric else ""), f"{value:.4f}")
        console.print(metrics)
    console.print("lineage:")
    console.print(_lineage_tree(lineage))
    files = Table(title="files", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    for fname, entry in sorted(record.files.items()):
        files.add_row(fname, human_size(entry.size), entry.sha256)
    console.print(files)
    if len(versions) > 1:
        console.print("versions: " + ", ".join(
            f"v{v.version}" + (f" ({', '.join(v.aliases)})" if v.aliases else "") for v in versions))


@click.command("tag")
@click.argument("ref", metavar="NAME@VER")
@click.argument("alias")
def tag_cmd(ref: str, alias: str) -> None:
    """Point the alias NAME@ALIAS at a version (moving it if it exists)."""
    with open_registry() as reg:
        record = reg.tag(ref, alias)
    click.echo(f"{record.name}@{alias} → {record.ref}")


@click.command("untag")
@click.argument("ref", metavar="NAME@ALIAS")
def untag_cmd(ref: str) -> None:
    """Remove the alias NAME@ALIAS (the version stays)."""
    from loradex.core.errors import InvalidNameError

    name, sep, alias = ref.partition("@")
    if not sep or not alias:
        raise InvalidNameError(f"{ref!r}: give the alias as NAME@ALIAS")
    with open_registry() as reg:
        reg.untag(name, alias)
    click.echo(f"removed alias {ref}")


@click.command("rm")
@click.argument("ref", metavar="NAME[@VER]")
@click.option("--force", is_flag=True, help="Remove even if an alias points at it (the alias goes too).")
def rm_cmd(ref: str, force: bool) -> None:
    """Remove a version, or every version of NAME; unreferenced files are collected."""
    with open_registry() as reg:
        removed = reg.remove(ref, force=force)
    for record in removed:
        click.echo(f"removed {record.ref}")


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--task", required=True, help="Task the adapter belongs to (e.g. classification).")
@click.option("--name", default=None, help="Adapter name (default: the folder's name).")
@click.option("--base", default=None, help="Base model, if adapter_config.json does not name it.")
def import_cmd(path: Path, task: str, name: str | None, base: str | None) -> None:
    """Import a plain PEFT adapter folder (adapter_config.json + safetensors) as a new version."""
    with open_registry() as reg:
        record = reg.import_folder(path, task=task, name=name, base=base)
    if record.args.get("import_note"):
        _note(f"note: {record.args['import_note']}")
    if not record.spec.head:
        _note("note: no loradex.json in the folder, so the head configuration is unknown")
    click.echo(f"imported {path} as {record.ref} ({human_size(record.size)})")


@click.command("export")
@click.argument("ref", metavar="NAME[@VER]")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--merged", is_flag=True,
              help="Merge the LoRA into the base: a standalone transformers folder plus the head(s) and a loader.")
def export_cmd(ref: str, dest: Path, merged: bool) -> None:
    """Write a version to DEST as a self-contained PEFT-format folder (or, --merged, a merged model)."""
    with open_registry() as reg:
        record = reg.resolve(ref)
        if merged:
            from loradex.registry.derive.export_merged import export_merged

            out = export_merged(record, reg.materialize(record), dest)
        else:
            out = reg.export(record, dest)
    click.echo(f"exported {record.ref} to {out}" + (" (merged into its base)" if merged else ""))


@click.command("verify")
@click.argument("ref", metavar="[NAME[@VER]]", required=False)
@click.option("--repair", is_flag=True,
              help="Rebuild what can be: the index from the version manifests, missing manifests, leftovers.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON to stdout.")
def verify_cmd(ref: str | None, repair: bool, as_json: bool) -> None:
    """Re-hash every stored file and check the index; report problems and exit non-zero if any is found."""
    from loradex.core.errors import IntegrityError
    from loradex.registry.store.registry import Registry

    reg = Registry.open(_home(), allow_damaged=True)
    try:
        repairs = reg.repair() if repair else []
        problems = reg.verify(ref)
        notes = reg.leftovers() if ref is None else []
    finally:
        reg.close()
    if as_json:
        _echo_json({"ok": not problems, "problems": problems, "repaired": repairs, "notes": notes})
    else:
        for line in repairs:
            click.echo(f"repaired: {line}")
        for problem in problems:
            click.echo(problem)
        for note in notes:
            click.echo(note, err=True)
    if problems:
        raise IntegrityError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found in the registry")
    if not as_json:
        click.echo(f"ok: {ref or 'registry'} verified, no problems")


COMMANDS = (list_cmd, show_cmd, tag_cmd, untag_cmd, rm_cmd, import_cmd, export_cmd, verify_cmd)


def register(cli: click.Group) -> None:
    """Add the registry commands to the root ``adapters`` group."""
    for command in COMMANDS:
        cli.add_command(command)
