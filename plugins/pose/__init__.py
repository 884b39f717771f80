"""Built-in pose / keypoint task plugin (top-down heatmap keypoints)."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_tasks(register):
    """Register the pose task."""
    from .task import PoseTask

    register(PoseTask())
