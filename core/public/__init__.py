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
from typing import Any

from loradex.core.hookspecs import hookimpl

_EXPORTS: dict[str, str] = {
    # users
    "load": "loradex.registry.loading",
    "pipeline": "loradex.registry.loading",
    "Pipeline": "loradex.registry.loading",
    "MultiTaskModel": "loradex.core.multitask",
    "ImageResult": "loradex.core.results",
    "TaskResult": "loradex.core.results",
    "BaseInfo": "loradex.core.results",
    "Registry": "loradex.registry.store",
    "Client": "loradex.registry.serve.client",
    "ServeSettings": "loradex.registry.serve.settings",
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
    "ClassificationMetrics": "loradex.core.metrics",
    "figure": "loradex.core.plots",
    "plot_bars": "loradex.core.plots",
    "plot_confusion_matrix": "loradex.core.plots",
    "HeadCode": "loradex.core.task",
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
