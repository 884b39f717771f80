"""The built-in tasks pass the same contract third-party tasks run (loradex.testing.TaskContract)."""

from __future__ import annotations

from loradex.testing import TaskContract


class TestClassificationContract(TaskContract):
    task = "classification"
    data = "synthetic:train=5,val=5,test=0"


class TestDetectionContract(TaskContract):
    task = "detection"


class TestPoseContract(TaskContract):
    task = "pose"


class TestSegmentationContract(TaskContract):
    task = "segmentation"
    data = "synthetic:train=6,val=4,test=0"


class TestGroundingContract(TaskContract):
    task = "grounding"
    data = "synthetic:train=4,val=3,test=0"
