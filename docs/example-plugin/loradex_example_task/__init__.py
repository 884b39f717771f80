"""loradex-example-task: the task ``brightness`` (regress an image's mean brightness) and one command."""

from loradex import hookimpl


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
