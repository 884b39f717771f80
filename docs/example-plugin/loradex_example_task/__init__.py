"""loradex-example-task: a complete third-party loradex task plugin.

It adds the task ``brightness``: regress the mean brightness (0..1) of an image. Everything a
task needs is here — data (synthetic, or a folder of images with a ``labels.csv``), a head, a
loss, metrics, post-processing and drawing — registered through the public hooks only.
"""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_tasks(register):
    """Register the brightness regression task."""
    from .task import BrightnessTask

    register(BrightnessTask())


@hookimpl
def register_commands(cli):
    """Add ``adapters brightness-of IMAGE``: the plain pixel mean, to compare predictions with."""
    import click

    @cli.command(name="brightness-of")
    @click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
    def brightness_of(images):
        """Print the measured mean brightness of IMAGES (no model involved)."""
        from .task import measured_brightness

        for path in images:
            click.echo(f"{path}\t{measured_brightness(path):.4f}")
