"""loradex: many vision tasks on one shared backbone, each a small LoRA adapter.

For users::

    import loradex

    pipe = loradex.pipeline("pose@v2")           # one adapter as a function of images
    result = pipe("person.jpg")                  # a TaskResult: result.to_dict(), .draw(), .save()

    model = loradex.load(["cls", "det@prod", "pose"])   # ONE base, three adapters
    for image in model.predict("photos/"):       # every task on every image, one pass per input size
        print(image.to_dict())                   # the record `adapters predict --json` prints
    model.replace("det@prod", "det@v4")          # the base stays loaded

    client = loradex.Client("http://127.0.0.1:8000")   # the same results from `adapters serve`
    client.predict("photos/", adapters=["cls", "det@prod"])

For plugin authors: ``hookimpl``, ``Task``, ``TaskData``, ``EvalResult``,
``MetricAccumulator``, ``EncoderOutput``, the dataset helpers (``ImageDataset``,
``TensorListDataset``, ``open_image``, ``parse_synthetic``, ...), ``Canvas`` for drawing and
the errors — see docs/writing-plugins.md. Everything here is imported on first use, so
``import loradex`` is cheap and internal modules are free to move.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loradex.core.hookspecs import hookimpl

if TYPE_CHECKING:  # what editors and type checkers see; at run time each name is imported on first use
    # (tests/test_packaging.py checks these lines name exactly the exports below)
    from loradex.registry.cli import cli  # noqa: F401
    from loradex.core.backbone import Backbone, EncoderOutput, LoadedBackbone  # noqa: F401
    from loradex.core.data import (  # noqa: F401
        ImageDataset,
        SPLITS,
        TensorListDataset,
        image_folder,
        image_size,
        is_image_file,
        labels_csv,
        open_image,
        paired_files,
        parse_synthetic,
        read_class_names,
        require_folder,
        seeded_split,
        synthetic_splits,
    )
    from loradex.core.data.boxes import BoxAnnotation  # noqa: F401
    from loradex.core.data.coco import read_coco_boxes  # noqa: F401
    from loradex.core.drawing import Canvas, colour_for  # noqa: F401
    from loradex.core.errors import (  # noqa: F401
        ArtifactError,
        BackboneError,
        ConfigError,
        DataError,
        FingerprintMismatchError,
        LoradexError,
        NotFoundError,
        ServerError,
        SpecError,
        TrainingDivergedError,
    )
    from loradex.core.metrics import ClassificationMetrics  # noqa: F401
    from loradex.core.multitask import MultiTaskModel  # noqa: F401
    from loradex.core.plots import figure, plot_bars, plot_confusion_matrix  # noqa: F401
    from loradex.core.results import BaseInfo, ImageResult, TaskResult  # noqa: F401
    from loradex.core.spec import AdapterSpec, LoraSettings, RuntimeSettings, TrainSettings  # noqa: F401
    from loradex.core.task import (  # noqa: F401
        EvalResult,
        HeadCode,
        HeadContext,
        ImageTransform,
        MetricAccumulator,
        NoOptions,
        Task,
        TaskData,
        head_levels,
        option_help,
    )
    from loradex.registry.loading import Pipeline, load, pipeline  # noqa: F401
    from loradex.registry.serve.client import Client  # noqa: F401
    from loradex.registry.serve.settings import ServeSettings  # noqa: F401
    from loradex.registry.store.registry import Registry  # noqa: F401

_EXPORTS: dict[str, str] = {
    # users
    "load": "loradex.registry.loading",
    "pipeline": "loradex.registry.loading",
    "Pipeline": "loradex.registry.loading",
    "MultiTaskModel": "loradex.core.multitask",
    "ImageResult": "loradex.core.results",
    "TaskResult": "loradex.core.results",
    "BaseInfo": "loradex.core.results",
    "Registry": "loradex.registry.store.registry",
    "Client": "loradex.registry.serve.client",
    "ServeSettings": "loradex.registry.serve.settings",
    "cli": "loradex.registry.cli",
    # plugin authors
    "Task": "loradex.core.task",
    "TaskData": "loradex.core.task",
    "EvalResult": "loradex.core.task",
    "MetricAccumulator": "loradex.core.task",
    "NoOptions": "loradex.core.task",
    "option_help": "loradex.core.task",
    "ImageTransform": "loradex.core.task",
    "EncoderOutput": "loradex.core.backbone",
    "Backbone": "loradex.core.backbone",
    "LoadedBackbone": "loradex.core.backbone",
    "AdapterSpec": "loradex.core.spec",
    "LoraSettings": "loradex.core.spec",
    "TrainSettings": "loradex.core.spec",
    "RuntimeSettings": "loradex.core.spec",
    "Canvas": "loradex.core.drawing",
    "colour_for": "loradex.core.drawing",
    "ImageDataset": "loradex.core.data",
    "TensorListDataset": "loradex.core.data",
    "open_image": "loradex.core.data",
    "is_image_file": "loradex.core.data",
    "parse_synthetic": "loradex.core.data",
    "require_folder": "loradex.core.data",
    "synthetic_splits": "loradex.core.data",
    "seeded_split": "loradex.core.data",
    "image_folder": "loradex.core.data",
    "labels_csv": "loradex.core.data",
    "image_size": "loradex.core.data",
    "SPLITS": "loradex.core.data",
    "paired_files": "loradex.core.data",
    "read_coco_boxes": "loradex.core.data.coco",
    "BoxAnnotation": "loradex.core.data.boxes",
    "read_class_names": "loradex.core.data",
    "ClassificationMetrics": "loradex.core.metrics",
    "figure": "loradex.core.plots",
    "plot_bars": "loradex.core.plots",
    "plot_confusion_matrix": "loradex.core.plots",
    "HeadCode": "loradex.core.task",
    "HeadContext": "loradex.core.task",
    "head_levels": "loradex.core.task",
    "TrainingDivergedError": "loradex.core.errors",
    # errors
    "LoradexError": "loradex.core.errors",
    "ConfigError": "loradex.core.errors",
    "DataError": "loradex.core.errors",
    "SpecError": "loradex.core.errors",
    "ArtifactError": "loradex.core.errors",
    "BackboneError": "loradex.core.errors",
    "NotFoundError": "loradex.core.errors",
    "FingerprintMismatchError": "loradex.core.errors",
    "ServerError": "loradex.core.errors",
}

__all__ = ["hookimpl", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("loradex")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0+unknown"
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loradex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
