"""The one plugin manager: built-in plugins and third-party ones load the same way.

Built-in plugins are module names registered with ``pm.register``; third-party plugins come
from the ``loradex`` entry-point group. ``LORADEX_LOAD_PLUGINS`` (comma-separated
distribution or entry-point names; empty for none) limits which third-party plugins load. A
plugin that fails to import, or implements a hook loradex does not define, is reported by
name and left out; the rest keeps working.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError

BUILTIN_PLUGINS: tuple[str, ...] = (
    "loradex.plugins.backbones",
    "loradex.plugins.classification",
    "loradex.plugins.detection",
    "loradex.plugins.pose",
)
ENTRY_POINT_GROUP = "loradex"
LOAD_ENV = "LORADEX_LOAD_PLUGINS"

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


_state = _State()


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def _fail(plugin: str, exc: BaseException | str) -> None:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    _state.failures[plugin] = text
    _warn(f"plugin {plugin!r} is disabled: {text}")


def load_plugins() -> pluggy.PluginManager:
    """Register built-in and installed plugins once per process; return the manager."""
    if _state.loaded:
        return pm
    _state.loaded = True
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.check_pending()

    allowed = os.environ.get(LOAD_ENV)
    wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist_name = ep.dist.name if ep.dist else None
        if wanted is not None and ep.name not in wanted and dist_name not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None or ep.name in _state.failures:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            _fail(ep.name, exc)
            continue
        if ep.dist:
            _state.dists[ep.name] = (ep.dist.name, ep.dist.version)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=ep.name)
            _fail(ep.name, exc)
    return pm


def _call_each(hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of a hook separately, so one broken plugin is isolated."""
    for impl in getattr(load_plugins().hook, hook_name).get_hookimpls():
        try:
            impl.function(**kwargs)
        except Exception as exc:  # noqa: BLE001
            _fail(impl.plugin_name, exc)


def _collect(hook_name: str, kind: str, check: Callable[[Any], bool]) -> dict[str, Registration]:
    found: dict[str, Registration] = {}
    for impl in getattr(load_plugins().hook, hook_name).get_hookimpls():
        plugin = impl.plugin_name

        def register(obj: Any, _plugin: str = plugin) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name or not check(obj):
                raise PluginError(f"{_plugin} registered {obj!r}, which is not a valid {kind}")
            if name in found:
                raise PluginError(f"{kind} {name!r} is already registered by {found[name].plugin}")
            found[name] = Registration(name=name, obj=obj, plugin=_plugin)

        try:
            impl.function(register=register)
        except Exception as exc:  # noqa: BLE001
            _fail(plugin, exc)
    return dict(sorted(found.items()))


def get_tasks() -> dict[str, Registration]:
    """Every registered task by name."""
    if _state.tasks is None:
        from .task import Task

        _state.tasks = _collect("register_tasks", "task", lambda obj: isinstance(obj, Task))
    return _state.tasks


def get_task(name: str):
    """The task called ``name``; raises UnknownNameError with a suggestion."""
    tasks = get_tasks()
    if name not in tasks:
        raise UnknownNameError("task", name, tasks)
    return tasks[name].obj


def get_backbones() -> dict[str, Registration]:
    """Every registered backbone (presets and loaders) by name."""
    if _state.backbones is None:
        from .backbone import Backbone

        _state.backbones = _collect("register_backbones", "backbone", lambda obj: isinstance(obj, Backbone))
    return _state.backbones


def resolve_backbone(source: str):
    """The backbone that loads ``source``: a registered name, else the first that handles it."""
    backbones = get_backbones()
    if source in backbones:
        return backbones[source].obj
    for registration in backbones.values():
        if registration.obj.handles(source):
            return registration.obj
    raise UnknownNameError("backbone", source, backbones)


def register_commands(cli: Any) -> None:
    """Let every plugin add commands to the root click group ``cli``."""
    _call_each("register_commands", cli=cli)


def plugin_infos(*, include_builtin: bool = False) -> list[PluginInfo]:
    """The loaded plugins (and those that failed), for ``adapters plugins``."""
    load_plugins()
    get_tasks()
    get_backbones()
    infos: list[PluginInfo] = []
    for name, plugin in pm.list_name_plugin():
        builtin = name in BUILTIN_PLUGINS
        if builtin and not include_builtin:
            continue
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        package, version = _state.dists.get(name, (None, None))
        infos.append(PluginInfo(name, hooks, builtin, package, version, _state.failures.get(name)))
    for name, error in _state.failures.items():
        if pm.get_plugin(name) is None:
            infos.append(PluginInfo(name, (), False, None, None, error))
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
