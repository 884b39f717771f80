"""`adapters demo`: the shelf on a web page (Gradio), every chosen task drawn on one upload."""

from __future__ import annotations

import click

from loradex.core.errors import ConfigError


@click.command(name="demo")
@click.argument("refs", metavar="[REF[,REF...]]", required=False, default="")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the page to your network.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: the first free from 7860).")
@click.option("--share", is_flag=True, help="Also publish a temporary public gradio.live link (off unless asked).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available).")
@click.pass_context
def demo_command(ctx: click.Context, refs: str, host: str, port: int | None, share: bool, device: str | None) -> None:
    """Serve a page to try adapters on images: upload, choose adapters (one shared base), see every task.

    REF[,REF...] are pre-selected (default: the latest version of every adapter on one base).
    Needs the demo extra: pip install 'loradex[demo]'.
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("adapters demo needs Gradio: pip install 'loradex[demo]'") from None
    from loradex.registry.demo import serve
    from loradex.registry.loading import parse_refs

    from .options import check_listen_address

    check_listen_address(host, port)

    chosen = parse_refs(refs) if refs else []
    serve(chosen, host=host, port=port, share=share, home=ctx.obj.get("home"), device=device)


def register(cli: click.Group) -> None:
    """Add ``demo`` to the root group."""
    cli.add_command(demo_command)
