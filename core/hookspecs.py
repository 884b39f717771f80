"""The hooks a loradex plugin may implement. Built-in plugins use exactly these."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("loradex")
hookimpl = HookimplMarker("loradex")


@hookspec
def register_tasks(register):
    """Register tasks: call ``register(task)`` once per :class:`loradex.core.task.Task`."""


@hookspec
def register_backbones(register):
    """Register backbones: call ``register(backbone)`` once per :class:`loradex.core.backbone.Backbone`."""


@hookspec
def register_commands(cli):
    """Add commands to the ``adapters`` CLI: ``cli`` is its root :class:`click.Group`."""
