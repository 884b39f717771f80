"""`adapters plugins`, `tasks`, `install` and `uninstall`."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import sys

from pathlib import Path

import click

from loradex.core.errors import LoradexError

from .options import print_json


@click.command(name="plugins")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(show_all: bool, as_json: bool) -> None:
    """List installed plugins (and those that failed to load)."""
    from loradex.core import plugins

    infos = plugins.plugin_infos(include_builtin=show_all)
    if as_json:
        print_json([dataclasses.asdict(info) for info in infos])
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not infos:
        console.print("No plugins installed. (--all shows the built-in ones.)")
        return
    rows = []
    for info in infos:
        package = " ".join(filter(None, (info.package, info.version, "(built-in)" if info.builtin else "")))
        status = f"[red]failed: {info.error}[/red]" if info.error else "[green]ok[/green]"
        rows.append((info.name, package, ", ".join(info.hooks), status))
    if console.width < 120:  # one block per plugin: a failure's reason stays readable
        for name, package, hooks, status in rows:
            console.print(f"[bold]{name}[/bold]  {package}\n  hooks: {hooks or '-'}\n  {status}")
        return
    table = Table("name", "package", "hooks", "status")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@click.command(name="tasks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks_command(as_json: bool) -> None:
    """List the tasks and backbones, and which plugin gives each."""
    import dataclasses

    from loradex.core import plugins

    def options(task) -> list[dict]:
        return [{"name": f.name, "default": f.default, "help": f.metadata.get("help", "")}
                for f in dataclasses.fields(task.predict_options)]

    tasks = [
        {"name": r.name, "plugin": r.plugin, "description": r.obj.description, "formats": list(r.obj.formats),
         "primary_metric": r.obj.primary_metric, "predict_options": options(r.obj)}
        for r in plugins.get_tasks().values()
    ]
    backbones = [{"name": r.name, "plugin": r.plugin, "description": r.obj.description}
                 for r in plugins.get_backbones().values()]
    if as_json:
        print_json({"tasks": tasks, "backbones": backbones})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if console.width < 120:  # a table of six columns is unreadable here: one block per task, one line per backbone
        for t in tasks:
            opts = ", ".join(f"{o['name']}={o['default']}" for o in t["predict_options"]) or "-"
            console.print(f"[bold]{t['name']}[/bold]  [dim]({t['plugin']})[/dim]\n  {t['description']}\n"
                          f"  formats: {', '.join(t['formats'])} · metric: {t['primary_metric']} · -o options: {opts}")
        console.print("\n[bold]backbones[/bold]")
        for b in backbones:
            console.print(f"  [bold]{b['name']}[/bold]: {b['description']}")
        return
    table = Table("task", "plugin", "formats", "metric", "predict options (-o KEY=VALUE)", "description", title="Tasks")
    for t in tasks:
        opts = ", ".join(f"{o['name']}={o['default']}" for o in t["predict_options"]) or "-"
        table.add_row(t["name"], t["plugin"], ", ".join(t["formats"]), t["primary_metric"], opts, t["description"])
    console.print(table)
    table = Table("backbone", "plugin", "description", title="Backbones")
    for b in backbones:
        table.add_row(b["name"], b["plugin"], b["description"])
    console.print(table)


def _installer() -> list[str]:
    """pip of the running interpreter, or uv pointed at it (uv environments have no pip)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip"]
    raise LoradexError("neither pip nor uv is available to install packages into this environment")


def _run_installer(verb: str, args: list[str]) -> None:
    command = _installer()
    full = [*command, verb, *args]
    if command[0] != sys.executable:
        full += ["--python", sys.executable]
    result = subprocess.run(full, check=False)
    if result.returncode != 0:
        tool = "python -m pip" if command[0] == sys.executable else "uv pip"
        raise LoradexError(f"{tool} {verb} {' '.join(args)} failed with exit code {result.returncode}")


@click.command(name="install")
@click.argument("packages", nargs=-1)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade packages that are already installed.")
@click.option("-e", "--editable", "editables", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Install a local project in editable mode (repeat for several).")
@click.option("--dry-run", is_flag=True, help="Resolve and report what would be installed, change nothing.")
def install_command(packages: tuple[str, ...], upgrade: bool, editables: tuple[str, ...], dry_run: bool) -> None:
    """Install plugin packages into the environment loradex runs in (pip, or uv where there is no pip)."""
    if not packages and not editables:
        raise click.UsageError("name at least one package, or --editable PATH")
    args = list(packages)
    if upgrade:
        args.insert(0, "--upgrade")
    if dry_run:
        args.insert(0, "--dry-run")
    for path in editables:
        args += ["--editable", path]
    _run_installer("install", args)
    project = _uv_project()
    if project is not None and not dry_run:
        # a plugin is the project's tool, not its runtime dependency: a dev dependency, local ones editable
        keep = [f"uv add --dev {' '.join(packages)}"] if packages else []
        keep += [f"uv add --dev --editable {path}" for path in editables]
        click.echo(f"Note: this environment belongs to the uv project {project}: `uv sync` removes what "
                   f"`adapters install` added. Keep it with {' and '.join(f'`{k}`' for k in keep)}.", err=True)


def _uv_project() -> Path | None:
    """The uv project whose environment this is (a uv.lock beside the running .venv), if any."""
    env = Path(sys.prefix)
    if env.name == ".venv" and (env.parent / "uv.lock").is_file():
        return env.parent
    return None


@click.command(name="uninstall")
@click.argument("packages", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (pip only).")
def uninstall_command(packages: tuple[str, ...], yes: bool) -> None:
    """Uninstall plugin packages from the environment loradex runs in."""
    _warn_stored_versions(packages)
    args = list(packages)
    if yes and _installer()[0] == sys.executable:
        args.insert(0, "-y")
    _run_installer("uninstall", args)


def _warn_stored_versions(packages: tuple[str, ...]) -> None:
    """Say how many stored versions need a task these packages provide (they stay, but cannot run)."""
    from loradex.core import plugins

    from .options import open_registry

    wanted = {p.lower().replace("_", "-") for p in packages}
    tasks = {name for name, registration in plugins.get_tasks().items()
             if (plugins.provider(name) or "").split(" ")[0].lower().replace("_", "-") in wanted}
    if not tasks:
        return
    with open_registry() as registry:
        using = [record.ref for row in registry.list() for record in registry.versions(row.name)
                 if set(record.spec.tasks) & tasks]
    if using:
        shown = ", ".join(using[:5]) + (", ..." if len(using) > 5 else "")
        click.echo(f"Warning: {', '.join(packages)} provides {', '.join(sorted(tasks))}, used by {len(using)} stored "
                   f"version{'s' if len(using) != 1 else ''} ({shown}); they stay in the registry but cannot run "
                   "until the package is installed again", err=True)


def register(cli: click.Group) -> None:
    """Add these commands to the root group."""
    for command in (plugins_command, tasks_command, install_command, uninstall_command):
        cli.add_command(command)
