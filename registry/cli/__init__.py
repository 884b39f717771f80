"""The `adapters` command line: one root group, one module per command group.

Torch and transformers are imported inside commands only, so ``adapters --help`` is fast.
"""

from __future__ import annotations

import os
import sys

import click

from loradex.core.errors import LoradexError


class LoradexGroup(click.Group):
    """The root group: LoradexErrors become one ``Error: ...`` line; plugin commands load lazily.

    Built-in commands never wait for plugins to load; a command name that is not built in, or a
    listing of all commands (``--help``), loads the plugins and their ``register_commands``.
    """

    plugins_loaded = False

    def load_plugin_commands(self) -> None:
        """Let every plugin add its commands (once)."""
        if not self.plugins_loaded:
            from loradex.core import plugins

            self.plugins_loaded = True
            plugins.register_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str):
        """A built-in command, or else one a plugin adds."""
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self.load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context):
        """Every command, plugins' included."""
        self.load_plugin_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context):
        """Run the command; user-facing errors become a single line on stderr (with --traceback, more)."""
        try:
            return super().invoke(ctx)
        except LoradexError as exc:
            from loradex.core.plugins import debugging

            if debugging():
                import traceback

                click.echo(traceback.format_exc().rstrip(), err=True)
            error = click.ClickException(str(exc).replace("\n", " "))
            error.exit_code = exc.exit_code
            raise error from None


@click.group(cls=LoradexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loradex", prog_name="adapters")
@click.option("--home", type=click.Path(file_okay=False), envvar="LORADEX_HOME", default=None,
              help="Registry folder, with loradex's other files (image cache, converted bases) "
                   "(default: $LORADEX_HOME or ~/.cache/loradex).")
@click.option("--traceback", "show_traceback", is_flag=True,
              help="Show tracebacks of errors and of plugins that fail to load (as LORADEX_DEBUG=1 does).")
@click.option("--threads", type=click.IntRange(min=1), envvar="LORADEX_THREADS", default=None,
              help="CPU threads torch may use (default: the cores this process may run on).")
@click.pass_context
def cli(ctx: click.Context, home: str | None, show_traceback: bool, threads: int | None) -> None:
    """loradex: train, version, merge and share LoRA adapters on one shared vision backbone."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home
    if home is not None and os.environ.get("LORADEX_HOME") != home:  # the image cache and bases follow it too
        before = os.environ.get("LORADEX_HOME")
        os.environ["LORADEX_HOME"] = home

        def restore() -> None:  # an in-process caller (a test, a notebook) gets its environment back
            if before is None:
                os.environ.pop("LORADEX_HOME", None)
            else:
                os.environ["LORADEX_HOME"] = before

        ctx.call_on_close(restore)
    if show_traceback:
        os.environ["LORADEX_DEBUG"] = "1"
    if threads is not None:
        os.environ["LORADEX_THREADS"] = str(threads)  # read by configure_threads when torch is first used


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate)\b.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _build() -> click.Group:
    from . import demo_cmd, hub_cmd, merge_cmd, plugins_cmd, predict_cmd, serve_cmd, store_cmd, train_cmd

    for module in (plugins_cmd, train_cmd, predict_cmd, store_cmd, merge_cmd, hub_cmd, demo_cmd, serve_cmd):
        module.register(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``adapters``."""
    _quiet_libraries()
    _build().main(args=argv if argv is not None else sys.argv[1:], prog_name="adapters")


_build()
