"""Render docs/cli.md from the click commands themselves, so the reference cannot drift.

    python -m loradex.registry.cli.reference > docs/cli.md
"""

from __future__ import annotations

import click


def render_reference(root: click.Group) -> str:
    """Markdown with the help text of the root group and of every built-in command."""
    builtin = {name: command for name, command in root.commands.items()
               if command.callback and command.callback.__module__.startswith("loradex.registry")}
    shown = click.Group(root.name, commands=builtin, params=root.params, help=root.help,
                        context_settings=root.context_settings)
    ctx = shown.make_context("adapters", [], resilient_parsing=True, terminal_width=88, max_content_width=88)
    parts = ["# `adapters` CLI reference", "",
             "Generated from the commands' own help (`python -m loradex.registry.cli.reference`).",
             "Plugins add commands of their own; `adapters --help` lists everything installed.", "",
             "```text", shown.get_help(ctx), "```", ""]
    for name in sorted(builtin):
        command = builtin[name]
        sub = click.Context(command, info_name=name, parent=ctx, terminal_width=88, max_content_width=88)
        parts += [f"## `adapters {name}`", "", "```text", command.get_help(sub), "```", ""]
    text = "\n".join(parts)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


if __name__ == "__main__":
    from . import cli

    click.echo(render_reference(cli), nl=False)
