"""Built-in object detection task plugin."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_tasks(register):
    """Register the detection task."""
    from .task import DetectionTask

    register(DetectionTask())
