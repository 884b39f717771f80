"""Built-in semantic segmentation, written through the public ``loradex`` API as a third-party plugin would be."""

from loradex import hookimpl


@hookimpl
def register_tasks(register):
    """Register the segmentation task."""
    from .task import SegmentationTask

    register(SegmentationTask())
