"""Built-in grounding task plugin: Florence-2 detection as text, region captions, phrase grounding."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_tasks(register):
    """Register the grounding task."""
    from .task import GroundingTask

    register(GroundingTask())
