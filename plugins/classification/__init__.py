"""Built-in image classification task plugin."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_tasks(register):
    """Register the classification task."""
    from .task import ClassificationTask

    register(ClassificationTask())
