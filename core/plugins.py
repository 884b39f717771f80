"""The one plugin manager: built-in plugins and third-party ones load the same way.

Every plugin comes from the ``loradex`` entry-point group: the built-in ones are the entry
points loradex's own distribution declares in pyproject.toml (core names none of them), the
others are third-party. ``LORADEX_LOAD_PLUGINS`` (comma-separated
distribution or entry-point names; empty for none) limits which third-party plugins load; a
name in it that matches no installed plugin is warned about. A plugin that fails to import,
raises in a hook, registers a taken name or implements a hook loradex does not define is
disabled as a whole — nothing it registered stays — and reported with its distribution;
``LORADEX_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError

DISTRIBUTION = "loradex"
ENTRY_POINT_GROUP = "loradex"
LOAD_ENV = "LORADEX_LOAD_PLUGINS"
DEBUG_ENV = "LORADEX_DEBUG"

pm = pluggy.PluginManager("loradex")
pm.add_hookspecs(hookspecs)


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``adapters plugins`` shows it."""

    name: str
    hooks: tuple[str, ...]
    builtin: bool
    package: str | None = None
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Registration:
    """A task or backbone and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


@dataclass
class _State:
    loaded: bool = False
    failures: dict[str, str] = field(default_factory=dict)
    dists: dict[str, tuple[str, str]] = field(default_factory=dict)
    tasks: dict[str, Registration] | None = None
    backbones: dict[str, Registration] | None = None
    builtin: tuple[str, ...] = ()


_state = _State()


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def debugging() -> bool:
    """Whether ``LORADEX_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def _fail(plugin: str, exc: BaseException | str) -> None:
    """Disable ``plugin`` entirely (its hooks and whatever it registered) and say so once."""
    if plugin in _state.failures:
        return
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    _state.failures[plugin] = text
    dist = _state.dists.get(plugin)
    source = f" (from {dist[0]} {dist[1]})" if dist else ""
    hint = "" if debugging() else f"; {DEBUG_ENV}=1 shows the traceback"
    _warn(f"plugin {plugin!r}{source} is disabled: {text}{hint}")
    if debugging() and isinstance(exc, BaseException):
        import traceback

        print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), file=sys.stderr)
    if plugin not in _state.builtin and pm.get_plugin(plugin) is not None:
        pm.unregister(name=plugin)


def _entry_points() -> tuple[list[Any], list[Any]]:
    """(loradex's own entry points, the third-party ones) of the ``loradex`` group."""
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    own = [ep for ep in found if ep.dist is not None and ep.dist.name == DISTRIBUTION]
    if not own:
        raise PluginError(f"loradex's own plugins are not registered (no {ENTRY_POINT_GROUP!r} entry points in "
                          "its installed metadata): reinstall it (uv sync, or pip install -e .)")
    return own, [ep for ep in found if ep not in own]


def builtin_plugins() -> tuple[str, ...]:
    """Names of the built-in plugins: the entry points loradex's own pyproject.toml declares."""
    load_plugins()
    return _state.builtin


def load_plugins() -> pluggy.PluginManager:
    """Register built-in and installed plugins once per process; return the manager."""
    if _state.loaded:
        return pm
    _state.loaded = True
    own, found = _entry_points()
    for ep in own:  # always loaded, whatever LORADEX_LOAD_PLUGINS says
        pm.register(ep.load(), name=ep.name)
        _state.dists[ep.name] = (ep.dist.name, ep.dist.version)
    _state.builtin = tuple(ep.name for ep in own)
    pm.check_pending()

    allowed = os.environ.get(LOAD_ENV)
    wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    if wanted:
        known = {ep.name for ep in found} | {ep.dist.name for ep in found if ep.dist}
        for name in sorted(wanted - known):
            from .errors import suggest

            _warn(f"{LOAD_ENV} names {name!r}, which is not an installed plugin.{suggest(name, known)} "
                  f"Installed: {', '.join(sorted(known)) or 'none'}")
    for ep in found:
        dist_name = ep.dist.name if ep.dist else None
        if wanted is not None and ep.name not in wanted and dist_name not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None or ep.name in _state.failures:
            continue
        if ep.dist:
            _state.dists[ep.name] = (ep.dist.name, ep.dist.version)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            _fail(ep.name, exc)
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=ep.name)
            _fail(ep.name, exc)
    return pm


def _collect(hook_name: str, kind: str, check: Callable[[Any], bool]) -> dict[str, Registration]:
    """Every registration of one hook; a plugin's registrations count only if its hook completed."""
    found: dict[str, Registration] = {}
    for impl in getattr(load_plugins().hook, hook_name).get_hookimpls():
        plugin = impl.plugin_name
        if plugin in _state.failures:
            continue
        mine: dict[str, Registration] = {}

        def register(obj: Any, _plugin: str = plugin, _mine: dict = mine) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name or not check(obj):
                raise PluginError(f"{_plugin} registered {obj!r}, which is not a valid {kind}")
            owner = found.get(name) or _mine.get(name)
            if owner is not None:
                raise PluginError(f"{kind} {name!r} is already registered by {owner.plugin}")
            _mine[name] = Registration(name=name, obj=obj, plugin=_plugin)

        try:
            impl.function(register=register)
        except Exception as exc:  # noqa: BLE001 - nothing of a failing plugin is kept
            _fail(plugin, exc)
            continue
        found.update(mine)
    return dict(sorted(found.items()))


def _alive(registrations: dict[str, Registration]) -> dict[str, Registration]:
    """Registrations of plugins that have not failed since (a later hook may disable one)."""
    return {name: r for name, r in registrations.items() if r.plugin not in _state.failures}


def get_tasks() -> dict[str, Registration]:
    """Every registered task by name."""
    if _state.tasks is None:
        from .task import Task

        _state.tasks = _collect("register_tasks", "task", lambda obj: isinstance(obj, Task))
    return _alive(_state.tasks)


def get_task(name: str, *, made_by: str | None = None):
    """The task called ``name``; raises UnknownNameError with a suggestion.

    ``made_by``: the package (and version) an adapter recorded for the task (``AdapterSpec.plugins``);
    the error then says what to install.
    """
    tasks = get_tasks()
    if name not in tasks:
        if made_by:
            package = made_by.split()[0]
            raise UnknownNameError("task", name, tasks, hint=f" It comes from the package {made_by}: install it "
                                                             f"(adapters install {package}) to use this adapter.")
        raise UnknownNameError("task", name, tasks)
    return tasks[name].obj


def provider(task: str) -> str | None:
    """``"package version"`` of the plugin that registered ``task`` (recorded in every spec), or None."""
    registration = get_tasks().get(task)
    dist = _state.dists.get(registration.plugin) if registration else None
    return f"{dist[0]} {dist[1]}" if dist else None


def get_backbones() -> dict[str, Registration]:
    """Every registered backbone (presets and loaders) by name."""
    if _state.backbones is None:
        from .backbone import Backbone

        _state.backbones = _collect("register_backbones", "backbone", lambda obj: isinstance(obj, Backbone))
    return _alive(_state.backbones)


def resolve_backbone(source: str):
    """The backbone that loads ``source``: a registered name, else the first that handles it."""
    backbones = get_backbones()
    if source in backbones:
        return backbones[source].obj
    for registration in backbones.values():
        if registration.obj.handles(source):
            return registration.obj
    raise UnknownNameError("backbone", source, backbones)


def default_backbone(kind: str) -> str:
    """The name of the backbone registered as the default for tasks on ``kind`` bases (``encoder``,
    ``encoder-decoder``): the first whose ``default_for`` names it."""
    for name, registration in get_backbones().items():
        if kind in getattr(registration.obj, "default_for", ()):
            return name
    from .errors import ConfigError

    raise ConfigError(f"no installed backbone is the default for {kind} tasks; name one with --backbone")


def register_commands(cli: Any) -> None:
    """Let every plugin add commands to the root click group ``cli``.

    A plugin may not replace a built-in command: the built-in stays and the plugin is told.
    A plugin whose hook raises is disabled, and the commands it added are taken back out.
    """
    for impl in load_plugins().hook.register_commands.get_hookimpls():
        plugin = impl.plugin_name
        if plugin in _state.failures:
            continue
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001
            cli.commands.clear()
            cli.commands.update(before)
            _fail(plugin, exc)
            continue
        for name, command in list(cli.commands.items()):
            if name in before and before[name] is not command:
                cli.commands[name] = before[name]
                _warn(f"plugin {plugin!r} tried to add the command {name!r}, which is already "
                      f"{'built in' if plugin not in _state.builtin else 'taken'}; its command is ignored")


def plugin_infos(*, include_builtin: bool = False) -> list[PluginInfo]:
    """The loaded plugins (and those that failed), for ``adapters plugins``."""
    load_plugins()
    get_tasks()
    get_backbones()
    infos: list[PluginInfo] = []
    for name, plugin in pm.list_name_plugin():
        builtin = name in _state.builtin
        if builtin and not include_builtin:
            continue
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        package, version = _state.dists.get(name, (None, None))
        infos.append(PluginInfo(name, hooks, builtin, package, version, _state.failures.get(name)))
    for name, error in _state.failures.items():
        if pm.get_plugin(name) is None:  # a plugin that failed to import still names its package
            package, version = _state.dists.get(name, (None, None))
            infos.append(PluginInfo(name, (), False, package, version, error))
    return sorted(infos, key=lambda info: (not info.builtin, info.name))


def failures() -> dict[str, str]:
    """Plugins that could not be loaded or whose hooks raised, with the reason."""
    return dict(_state.failures)


def reset() -> None:
    """Forget every registered plugin (for tests that load plugins anew)."""
    for name, _ in list(pm.list_name_plugin()):
        pm.unregister(name=name)
    global _state
    _state = _State()
