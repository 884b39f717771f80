"""Task: what a task plugin provides on top of a shared backbone.

A task owns its data formats and readers, its head, loss, metrics, post-processing to plain
predictions, drawing and plots, and the default LoRA / training settings. The engine and the
registry only ever talk to a task through this interface.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigError, suggest
from .spec import LoraSettings, TrainSettings

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import Dataset

    from .drawing import Canvas

ImageTransform = Callable[["Image.Image"], "torch.Tensor"]
"""Turns one PIL image into the backbone's normalised (3, H, W) tensor."""


@dataclass
class TaskData:
    """The splits a task read, and the head configuration they imply (labels, keypoints, ...)."""

    train: Dataset | None
    val: Dataset | None
    test: Dataset | None = None
    head_config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    """One line saying what was read, e.g. ``synthetic shapes: 5 classes, 800/200/200 images``."""


@dataclass
class EvalResult:
    """Metrics of one evaluation, plus task-specific details for reports and plots."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


class MetricAccumulator(abc.ABC):
    """Collects model outputs batch by batch and computes metrics at the end."""

    @abc.abstractmethod
    def update(self, outputs: Any, targets: Any) -> None:
        """Add one batch of head outputs and the batch's targets."""

    @abc.abstractmethod
    def compute(self) -> EvalResult:
        """Metrics over everything added so far."""


@dataclass(frozen=True)
class HeadContext:
    """What a head is built for, passed to ``build_head(..., context=...)`` when it takes it.

    A per-pixel head needs the input size and the grid's stride instead of storing the image
    size in its spec a second time.
    """

    image_size: int
    """Input pixels (square) the head reads features of."""
    grid_size: tuple[int, int]
    """(rows, cols) of ``EncoderOutput.patches`` at that size."""
    stride: int
    """Input pixels per grid cell (a ViT's patch size, a CNN's total stride)."""
    hidden_size: int
    """Width of ``patches`` and ``cls``."""
    convolutional: bool = False
    """Whether the base is a CNN (its grid is a feature map, not patch tokens)."""
    levels: Mapping[int, int] = field(default_factory=dict)
    """Stride → width of the finer maps the base gives in ``EncoderOutput.levels`` (empty: none)."""

    @classmethod
    def of(cls, backbone: Any, image_size: int) -> HeadContext:
        """The context of ``backbone`` at ``image_size`` pixels."""
        return cls(image_size=image_size, grid_size=backbone.grid_at(image_size), stride=backbone.patch_size,
                   hidden_size=backbone.hidden_size, convolutional=bool(getattr(backbone, "is_convolutional", False)),
                   levels=dict(getattr(backbone, "feature_levels", {}) or {}))


def head_levels(head_config: Mapping[str, Any], context: HeadContext | None) -> list[list[int]]:
    """``[[stride, width], ...]`` of the finer maps ``head_config["levels"]`` names (strides), for a head's
    arguments; [] when it names none (adapters from before levels existed). A ConfigError names a
    stride the base does not offer."""
    strides = [int(s) for s in head_config.get("levels") or ()]
    if not strides:
        return []
    offered = dict(context.levels) if context is not None else {}
    missing = [s for s in strides if s not in offered]
    if missing:
        have = ", ".join(str(s) for s in sorted(offered)) or "none"
        raise ConfigError(f"head levels: this base has no stride-{missing[0]} map (it offers: {have})")
    return [[s, int(offered[s])] for s in strides]


@dataclass(frozen=True)
class HeadCode:
    """How to rebuild a task's head without loradex: a torch-only source file, a class and its arguments.

    ``adapters export --merged`` copies ``source`` beside the merged model so that the heads
    load with torch and transformers alone.
    """

    source: Path
    class_name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class NoOptions:
    """Prediction options of a task that takes none."""


def option_help(text: str, default: Any) -> Any:
    """A prediction-option field with help text (shown by ``adapters tasks``)."""
    return field(default=default, metadata={"help": text})


class Task(abc.ABC):
    """Base class of every task plugin; subclass it and register an instance."""

    name: ClassVar[str]
    """Name used on the command line (``adapters train NAME``)."""
    description: ClassVar[str] = ""
    """One line for ``adapters tasks``."""
    formats: ClassVar[tuple[str, ...]] = ()
    """Dataset formats ``load_data`` reads, e.g. ``("imagefolder", "synthetic")``."""
    primary_metric: ClassVar[str]
    """Metric that selects the best epoch and is shown in ``adapters list``."""
    greater_is_better: ClassVar[bool] = True
    requires: ClassVar[str] = "encoder"
    """The kind of base the task runs on: ``encoder`` (its head reads the base's tokens: ViT and kin)
    or ``encoder-decoder`` (pixels and a prompt → text: Florence-2). A task of the second kind owns
    its forward pass (:meth:`step`, :meth:`validate`) and its generation (:meth:`generate`)."""
    augmentations: ClassVar[tuple[str, ...]] = ()
    """The :class:`TrainSettings` augmentations :meth:`augment` applies (``fliplr``, ``flipud``, ``rot90``);
    training says so when the user sets one the task does not apply."""
    pipeline_tag: ClassVar[str | None] = None
    """The Hub's ``pipeline_tag`` for an adapter of this task alone (``image-classification``); None: none."""
    predict_options: ClassVar[type] = NoOptions
    """A frozen dataclass of the options ``postprocess`` takes (``top_k``, score thresholds, ...).

    ``adapters predict -o KEY=VALUE`` and ``model.predict(..., KEY=VALUE)`` are checked
    against it; its defaults apply when an option is not given.
    """

    @property
    def generates(self) -> bool:
        """Whether the base writes this task's answer (:meth:`generate`) instead of a head reading its tokens."""
        return self.requires == "encoder-decoder"

    def default_backbone(self) -> str:
        """The base this task trains on when none is given: the backbone a plugin declares the
        default for this task's kind of base (:attr:`requires`); override to choose another."""
        from . import plugins

        return plugins.default_backbone(self.requires)

    def example_images(self) -> dict[str, Image.Image]:
        """Pictures to try an adapter of this task on, by file name (``adapters demo`` offers them)."""
        return {}

    def synthetic_head_config(self) -> dict[str, Any]:
        """The head configuration this task's built-in synthetic data gives (labels, keypoints, ...),
        without reading the data; used by :func:`loradex.testing.random_adapter`. Empty: none."""
        return {}

    def default_lora(self) -> LoraSettings:
        """LoRA settings used when the user gives none: r=16, alpha 32 on every attention and MLP
        projection (what each built-in task measured best on the random-init presets)."""
        return LoraSettings(rank=16, alpha=32, targets="all")

    def default_train(self, backbone: str) -> TrainSettings:
        """Training settings used when the user gives none, for this backbone name."""
        return TrainSettings()

    def pretrained_defaults(self, backbone: Any) -> dict[str, dict[str, Any]]:
        """Changes to the defaults on a base with learned weights (``backbone.pretrained``).

        ``{"lora": {...}, "train": {...}, "head": {...}}``, each a partial mapping over
        :meth:`default_lora`, :meth:`default_train` and :meth:`default_head`. Learned features
        want a lower learning rate, a smaller rank and fewer epochs than a random-init base; the
        built-in tasks return what they measured on ``efficientnet-lite0`` (bench/real_data.py).
        The base's own ``default_targets`` (pointwise convs on a CNN) replace the task's targets
        whether or not it is pretrained. Options the user gives always win.
        """
        return {}

    def train_sampler(self, dataset: Any, settings: TrainSettings) -> Any:
        """The order of the training items, as a torch ``Sampler`` (None: the engine shuffles them)."""
        return None

    def augment(self, dataset: Any, settings: TrainSettings, *, head_config: Mapping[str, Any]) -> Any:
        """The training split as the engine reads it: wrapped in the augmentations ``settings`` ask for
        (``fliplr``, ``flipud``, ``rot90``) where the task knows how to move its targets with the pixels;
        ``head_config`` is the data's (pose reads its left/right keypoint pairs there). Default: unchanged."""
        return dataset

    def default_head(self) -> dict[str, Any]:
        """Head settings recorded in every new spec (so later default changes cannot alter old adapters)."""
        return {}

    @abc.abstractmethod
    def load_data(
        self, source: str | None, *, transform: ImageTransform, image_size: int, seed: int = 0
    ) -> TaskData:
        """Read a dataset: a path in one of ``formats``, or None/``synthetic`` for built-in data."""

    def check_data(self, data: TaskData, backbone: Any) -> None:
        """Refuse data ``backbone`` cannot take (a DataError naming the record), before any pass runs.

        Called by :meth:`read_data` with the loaded base: e.g. answer texts longer than a language
        model's positions. Default: nothing to check.
        """

    def read_data(self, source: str | None, *, backbone: Any, image_size: int, seed: int = 0) -> TaskData:
        """:meth:`load_data` with ``backbone``'s transform at ``image_size``, then :meth:`check_data`."""
        data = self.load_data(source, transform=backbone.transform_at(image_size), image_size=image_size, seed=seed)
        self.check_data(data, backbone)
        return data

    @abc.abstractmethod
    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any]) -> nn.Module:
        """The task head: an ``nn.Module`` mapping :class:`EncoderOutput` to raw outputs."""

    def head_for(self, backbone: Any, *, head_config: Mapping[str, Any], image_size: int) -> nn.Module:
        """:meth:`build_head` for ``backbone`` at ``image_size``; a ``build_head`` that takes ``context``
        also gets the :class:`HeadContext` (what every caller uses, so old plugins keep working)."""
        return self.build_head(hidden_size=backbone.hidden_size, grid_size=backbone.grid_at(image_size),
                               head_config=head_config, **_context_for(self.build_head, backbone, image_size))

    def head_defaults(self, context: HeadContext) -> dict[str, Any]:
        """Head settings that depend on the base (which feature levels to read), recorded in each new
        spec over :meth:`default_head`; options the user gives win. Default: none."""
        return {}

    def export_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any]) -> HeadCode | None:
        """The head as torch-only code (for ``adapters export --merged``); None if the task has none.

        Like :meth:`build_head`, it gets the :class:`HeadContext` when it takes a ``context`` parameter."""
        return None

    def export_for(self, backbone: Any, *, head_config: Mapping[str, Any], image_size: int) -> HeadCode | None:
        """:meth:`export_head` for ``backbone`` at ``image_size`` (with the context where it takes one)."""
        return self.export_head(hidden_size=backbone.hidden_size, grid_size=backbone.grid_at(image_size),
                                head_config=head_config, **_context_for(self.export_head, backbone, image_size))

    def merge_heads(self, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                    head_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One head from several of one schema (``adapters merge``); ``weights`` sum to 1.

        The default averages the parameters (integer buffers, such as BatchNorm's batch counters,
        are taken from the first head). A task whose head is linear in its parameters can do
        better: average the heads' OUTPUTS exactly (see the classification task).
        """
        out = {}
        for key, first in states[0].items():
            if first.is_floating_point():
                out[key] = sum(s[key].float() * w for s, w in zip(states, weights)).to(first.dtype)
            else:
                out[key] = first.clone()
        return out

    @abc.abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Scalar training loss of one batch."""

    def step(self, model: Any, batch: Mapping[str, Any], *, adapter: str | None = None) -> tuple[torch.Tensor, Any]:
        """One forward pass of a training batch: ``(loss, outputs)``.

        The default runs the base and this task's head (``model(pixels)``) and applies
        :meth:`loss`. A generative task tokenises its prompts and targets here and takes the
        loss of its language model (``model.runner(adapter)`` gives the base with the adapter on).
        """
        pixels = batch["pixel_values"]
        outputs = model(pixels, adapter=adapter) if adapter else model(pixels)
        return self.loss(outputs, batch["targets"]), outputs

    def validate(self, model: Any, batch: Mapping[str, Any], *, adapter: str | None = None) -> tuple[torch.Tensor, Any]:
        """``(loss, what the metric accumulator reads)`` for a validation batch (default: :meth:`step`).

        A generative task generates here, so that its metrics see what it would predict.
        """
        return self.step(model, batch, adapter=adapter)

    def generate(self, runner: Any, backbone: Any, pixel_values: torch.Tensor, head_config: Mapping[str, Any],
                 **options: Any) -> Any:
        """Outputs of an ``encoder-decoder`` task for :meth:`postprocess`: ``runner.generate(...)`` is the
        base's generation with this adapter on. Encoder tasks never get here."""
        raise NotImplementedError(f"task {self.name!r} does not generate")

    @abc.abstractmethod
    def metrics(self, head_config: Mapping[str, Any]) -> MetricAccumulator:
        """A fresh metric accumulator."""

    @abc.abstractmethod
    def postprocess(
        self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]], **options: Any
    ) -> list[dict[str, Any]]:
        """Raw outputs of a batch → one JSON-ready prediction per image (in original pixels)."""

    def summary(self, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> str:
        """One short line saying what was predicted (the CLI's plain output and drawing legends)."""
        text = json.dumps(dict(prediction), separators=(",", ":"), default=str)
        return text if len(text) <= 120 else text[:117] + "..."

    def render(self, canvas: Canvas, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *,
               colour: tuple[int, int, int]) -> None:
        """Draw what is spatial in ``prediction`` (boxes, points) on ``canvas``, in image pixels.

        The one-line :meth:`summary` is written in the canvas legend by the caller, so a task
        whose prediction has nothing spatial (a label) draws nothing here. ``colour`` is this
        task's colour in a drawing that shows several tasks.
        """

    def draw(self, image: Image.Image, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> Image.Image:
        """A drawing of ``prediction`` on (an enlarged copy of) ``image``, with its summary above it."""
        from .drawing import Canvas, colour_for

        canvas = Canvas(image)
        canvas.legend(self.summary(prediction, head_config), colour=colour_for(0))
        self.render(canvas, prediction, head_config, colour=colour_for(0))
        return canvas.finish()

    def parse_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``options`` against :attr:`predict_options`; strings from the CLI are converted.

        Returns every option with its default filled in. Raises ConfigError naming a key the
        task does not take (with a suggestion) or a value of the wrong type.
        """
        return parse_options(self.predict_options, options, owner=f"task {self.name!r}")

    def check_options(self, options: Mapping[str, Any], backbone: Any) -> None:
        """Refuse parsed ``options`` that ``backbone`` cannot take (a ConfigError naming the option).

        Called with the loaded base whenever options are parsed for a prediction, before any pass:
        on a server a request's options must fail that request alone, never a batch shared with
        others. Default: nothing to check.
        """

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Write task-specific PNG plots of an evaluation into ``out_dir``; return their paths."""
        return []

    def report(self, result: EvalResult, head_config: Mapping[str, Any]) -> str:
        """A human-readable text report of an evaluation."""
        width = max((len(k) for k in result.metrics), default=0)
        return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in sorted(result.metrics.items())) + "\n"

    def collate(self, items: Sequence[tuple[torch.Tensor, Any]]) -> dict[str, Any]:
        """Batch ``(pixel_values, target)`` items; tensor targets are stacked, integers become a tensor."""
        import torch

        pixels = torch.stack([item[0] for item in items])
        targets = [item[1] for item in items]
        if targets and isinstance(targets[0], torch.Tensor):
            targets = torch.stack(targets)
        elif targets and all(isinstance(t, int) for t in targets):
            targets = torch.tensor(targets, dtype=torch.long)
        return {"pixel_values": pixels, "targets": targets}



def option_names(options_type: type) -> tuple[str, ...]:
    """The option names a ``predict_options`` dataclass declares."""
    return tuple(f.name for f in dataclasses.fields(options_type))


def key_value_pairs(pairs: Iterable[Any], *, what: str, example: str) -> dict[str, str]:
    """``("top_k=3", "detection.min_score=0.5")`` → a dict of stripped strings (``-o``, ``--head``, a
    server's ``option`` fields); a pair without ``=`` or a key is a ConfigError naming ``what`` and
    showing ``example``."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {pair!r} is not KEY=VALUE (e.g. {example})")
        found[key.strip()] = value.strip()
    return found


def parse_options(options_type: type, options: Mapping[str, Any], *, owner: str) -> dict[str, Any]:
    """Validate ``options`` against the dataclass ``options_type``; convert CLI strings by field type."""
    import typing

    fields = {f.name: f for f in dataclasses.fields(options_type)}
    hints = typing.get_type_hints(options_type)
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            takes = ", ".join(fields) or "no options"
            raise ConfigError(f"{owner} has no prediction option {key!r}.{suggest(key, fields)} It takes: {takes}")
        values[key] = _convert(value, hints[key], owner=owner, key=key)
    return dataclasses.asdict(options_type(**values))


def _convert(value: Any, hint: Any, *, owner: str, key: str) -> Any:
    import math
    import typing

    allowed = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if value is None and type(None) in typing.get_args(hint):
        return None
    kind = allowed[0]
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = text.lower() in ("true", "1", "yes")
            elif kind in (int, float):
                value = kind(text)
        except ValueError:
            raise ConfigError(f"{owner}: option {key!r} needs a {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{owner}: option {key!r} needs a {kind.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{owner}: option {key!r} must be a finite number, got {value!r}")
    return value


def _context_for(method: Callable[..., Any], backbone: Any, image_size: int) -> dict[str, Any]:
    """``{"context": HeadContext}`` when ``method`` takes one (old plugins' methods do not)."""
    import inspect

    if "context" in inspect.signature(method).parameters:
        return {"context": HeadContext.of(backbone, image_size)}
    return {}
