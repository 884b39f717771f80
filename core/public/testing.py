"""Helpers for tests of loradex and of its plugins.

- :class:`TaskContract`: the tests every task must pass, to subclass in a plugin's test suite;
- ``loradex_home``: a pytest fixture giving each test its own registry (``LORADEX_HOME``);
- :func:`random_adapter`: a complete adapter folder (PEFT files, head, spec) whose LoRA factors
  are random rather than zero, so that an adapter changes the base's output a lot and a test
  comparing two ways of running it can fail — no training needed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def builtin_head_config(task: str) -> dict[str, Any]:
    """The head configuration the built-in synthetic data of ``task`` gives (labels, keypoints, ...)."""
    from loradex.core import plugins

    task_obj = plugins.get_task(task)
    data = task_obj.synthetic_head_config()
    if not data:
        raise ValueError(f"no built-in head configuration for task {task!r}; pass head=...")
    return {**task_obj.default_head(), **data}


def random_adapter(
    folder: str | Path,
    task: str,
    *,
    backbone: Any,
    rank: int = 8,
    alpha: float | None = None,
    targets: str = "q,v",
    image_size: int | None = None,
    head: Mapping[str, Any] | None = None,
    seed: int = 0,
    scale: float = 0.15,
    use_dora: bool = False,
    tokens: str | tuple[str, ...] = (),
) -> Path:
    """Write an adapter for ``task`` on ``backbone`` (a LoadedBackbone, left unchanged) into ``folder``.

    Every LoRA factor is drawn from N(0, ``scale``²) with ``seed``; the head is initialised by
    the task with the same seed. ``use_dora`` makes a DoRA adapter (which loradex's fast path
    hands to PEFT). ``tokens`` (e.g. ``"<loc_*>"``, on a base that reads text) also trains those
    token embeddings, their rows drawn like the factors.
    """
    import torch

    from loradex.core import plugins
    from loradex.core.artifact import save_artifact
    from loradex.core.model import build_model
    from loradex.core.spec import AdapterSpec, LoraSettings, parse_targets
    from loradex.core.task import HeadContext

    task_obj = plugins.get_task(task)
    size = image_size or backbone.image_size
    semantic = parse_targets(targets)
    lora = LoraSettings(rank=rank, alpha=alpha if alpha is not None else 2 * rank, targets=semantic,
                        target_modules=backbone.target_modules(semantic), tokens=tokens)
    if lora.tokens:
        lora = dataclasses.replace(lora, token_indices=backbone.token_indices(lora.tokens))
    if head is None:
        head = {**builtin_head_config(task), **task_obj.head_defaults(HeadContext.of(backbone, size))}
    spec = AdapterSpec(task=task, backbone=backbone.ref, lora=lora, head=dict(head), image_size=size)
    private = dataclasses.replace(backbone, model=copy.deepcopy(backbone.model))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        config = spec.to_lora_config()
        if use_dora:
            config.use_dora = True
        model = _build(task_obj, private, spec, config) if use_dora else build_model(task_obj, private, spec)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.encoder.named_parameters():
                if "lora_A" in name or "lora_B" in name or "trainable_tokens_delta" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
    finally:
        torch.random.set_rng_state(state)
    return save_artifact(model.eval(), spec, Path(folder))


def _build(task: Any, backbone: Any, spec: Any, config: Any) -> Any:
    from peft import get_peft_model

    from loradex.core.model import TaskModel, new_head

    model = TaskModel(backbone, get_peft_model(backbone.model, config, adapter_name="default"))
    model.add_head("default", new_head(task, backbone, spec), spec)
    return model


# --------------------------------------------------------------------------- the task contract


try:  # the contract and the fixture need pytest; random_adapter does not
    import pytest
except ImportError:  # pragma: no cover
    pytest = None


if pytest is not None:

    @pytest.fixture
    def loradex_home(tmp_path, monkeypatch):
        """A registry home of this test's own: ``LORADEX_HOME`` points at it, so nothing touches yours.

        Use it from a conftest.py: ``from loradex.testing import loradex_home  # noqa: F401``.
        """
        home = tmp_path / "loradex-home"
        monkeypatch.setenv("LORADEX_HOME", str(home))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return home


class TaskContract:
    """What every task must do, as pytest tests: subclass it in your plugin's tests.

    ::

        from loradex.testing import TaskContract

        class TestMyTask(TaskContract):
            task = "mytask"
            data = "synthetic:train=8,val=4"      # a small source your task reads

    The tests build the task's head on a tiny base, run a batch of its data through it, and
    check: the data and head configuration are JSON; the head's outputs give a finite loss and
    gradients; the metrics compute and the report and plots are written; predictions are
    JSON-ready and in the original image's pixels; the adapter survives save → registry → load
    unchanged; ``summary``, ``render`` and ``draw`` run; the prediction options parse. In the
    spirit of PEFT's common tester: one contract, every task.
    """

    task: str
    """Name of the task under test (as registered)."""
    data: str | None = "synthetic:train=8,val=4,test=0"
    backbone: str | None = None
    """The base to build on (default: the task's ``default_backbone()``)."""

    @(pytest.fixture(scope="class") if pytest is not None else (lambda f: f))
    @classmethod
    def contract(cls, tmp_path_factory):
        """The task, a tiny base, a batch of its data and a fresh model (built once per class)."""
        import torch

        from loradex.core import plugins
        from loradex.core.model import build_model
        from loradex.core.spec import AdapterSpec

        task = plugins.get_task(cls.task)
        name = cls.backbone or task.default_backbone()
        backbone = plugins.resolve_backbone(name).load(name)
        size = task.default_train(name).image_size or backbone.image_size
        data = task.read_data(cls.data, backbone=backbone, image_size=size, seed=0)
        spec = AdapterSpec(task=task.name, backbone=backbone.ref, head={**task.default_head(), **data.head_config},
                           lora=dataclasses.replace(task.default_lora(), rank=4, target_modules=backbone.target_modules(
                               task.default_lora().targets)), image_size=size)
        torch.manual_seed(0)
        private = dataclasses.replace(backbone, model=copy.deepcopy(backbone.model))
        model = build_model(task, private, spec)
        items = [data.val[i] for i in range(min(4, len(data.val)))]
        batch = task.collate(items)
        return {"task": task, "backbone": backbone, "data": data, "spec": spec, "model": model, "batch": batch,
                "root": tmp_path_factory.mktemp(f"contract-{cls.task}")}

    def test_data_and_head_configuration_are_json(self, contract):
        """The data source reads, has train and val splits, and its head configuration is JSON."""
        import json

        data = contract["data"]
        assert data.train is not None and len(data.train) > 0, "the training split is empty"
        assert data.val is not None and len(data.val) > 0, "the validation split is empty"
        json.dumps(data.head_config, allow_nan=False)
        assert data.description, "TaskData.description should say what was read"

    def test_head_gives_a_finite_loss_and_gradients(self, contract):
        """One training step: the loss is a finite scalar and reaches the head and the LoRA."""
        import math

        model, task, batch = contract["model"], contract["task"], contract["batch"]
        model.train()
        loss, _ = task.step(model, batch)
        assert loss.ndim == 0 and math.isfinite(float(loss.detach())), f"loss is {loss}"
        loss.backward()
        lora, head = model.trainable_parameters()
        assert not head or any(p.grad is not None and p.grad.abs().sum() > 0 for p in head), \
            "no gradient reaches the head"
        assert any(p.grad is not None for p in lora), "no gradient reaches the LoRA weights"
        model.zero_grad(set_to_none=True)
        model.eval()

    def test_metrics_report_and_plots(self, contract, tmp_path):
        """The accumulator computes the primary metric; report returns text; plot writes existing files."""
        import math

        import torch

        model, task, batch, spec = contract["model"], contract["task"], contract["batch"], contract["spec"]
        metrics = task.metrics(spec.head)
        with torch.inference_mode():
            metrics.update(task.validate(model, batch)[1], batch["targets"])
        result = metrics.compute()
        assert task.primary_metric in result.metrics, f"{task.primary_metric!r} is not among {list(result.metrics)}"
        assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
        assert isinstance(task.report(result, spec.head), str)
        for path in task.plot(result, spec.head, tmp_path) or []:
            assert path.is_file(), f"plot() returned {path}, which was not written"

    def test_predictions_are_json_in_image_pixels(self, contract):
        """postprocess returns one JSON-ready dict per image; summary is one line."""
        import json


        from PIL import Image

        from loradex.core.inference import predict_pil

        model, task, batch, spec = contract["model"], contract["task"], contract["batch"], contract["spec"]
        sizes = [(640, 480)] * batch["pixel_values"].shape[0]
        predictions = predict_pil(task, model, [Image.new("RGB", size, (60, 60, 60)) for size in sizes])
        assert len(predictions) == len(sizes)
        for prediction in predictions:
            json.dumps(prediction, allow_nan=False)
            line = task.summary(prediction, spec.head)
            assert isinstance(line, str) and "\n" not in line

    def test_adapter_round_trips_through_the_registry(self, contract):
        """save_artifact → Registry.put → MultiTaskModel: the same outputs as the model that was saved."""
        import torch

        from loradex.core.artifact import save_artifact
        from loradex.core.multitask import MultiTaskModel
        from loradex.registry.store.registry import Registry

        model, spec, root = contract["model"], contract["spec"], contract["root"]
        folder = save_artifact(model.eval(), spec, root / "adapter")
        with Registry.open(root / "home") as registry:
            record = registry.put(folder, name="contract")
            base = contract["backbone"]
            loaded = MultiTaskModel(dataclasses.replace(base, model=copy.deepcopy(base.model)))
            loaded.attach(record.ref, registry.materialize(record))
        task, batch = contract["task"], contract["batch"]
        with torch.inference_mode():
            before, after = task.step(model, batch), task.step(loaded, batch)
        assert torch.allclose(before[0], after[0], atol=1e-4), "the stored adapter has another loss"
        for a, b in zip(_tensors(before[1]), _tensors(after[1])):
            assert torch.allclose(a, b, atol=1e-4), "the stored adapter predicts differently"

    def test_drawing_runs(self, contract):
        """draw() gives an image; a multi-task drawing (ImageResult.draw) includes this task."""
        from PIL import Image

        from loradex.core.inference import predict_pil

        from loradex.core.drawing import Canvas
        from loradex.core.task import Task

        model, task, spec = contract["model"], contract["task"], contract["spec"]
        (prediction,) = predict_pil(task, model, [Image.new("RGB", (96, 64), (40, 40, 40))])
        drawn = task.draw(Image.new("RGB", (96, 64), (40, 40, 40)), prediction, spec.head)
        assert isinstance(drawn, Image.Image) and drawn.width >= 96
        # the drawing contract: a task draws by render() on the shared canvas (so a multi-task drawing
        # holds its marks); overriding draw() alone leaves it out of every drawing of several tasks
        assert type(task).draw is Task.draw or type(task).render is not Task.render, \
            "override render(canvas, ...), not draw(): several tasks share one canvas"
        canvas = Canvas(Image.new("RGB", (96, 64), (40, 40, 40)))
        task.render(canvas, prediction, spec.head, colour=(255, 0, 255))  # on a canvas another task shares
        assert isinstance(canvas.finish(), Image.Image)

    def test_prediction_options_have_defaults(self, contract):
        """``predict_options`` is a dataclass whose defaults parse; an unknown option is refused."""
        from loradex.core.errors import ConfigError

        task = contract["task"]
        assert isinstance(task.parse_options({}), dict)
        with pytest.raises(ConfigError):
            task.parse_options({"no_such_option_anywhere": 1})


def _tensors(outputs):
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [v for _, v in sorted(outputs.items()) if isinstance(v, torch.Tensor)]
    if hasattr(outputs, "logits"):  # a transformers ModelOutput
        return [outputs.logits]
    return [v for v in outputs if isinstance(v, torch.Tensor)]


def attach(
    model_or_backbone: Any,
    task: Any,
    folder: Path,
    *,
    adapter_name: str = "default",
    allow_base_mismatch: bool = False,
) -> Any:
    """Attach the adapter in ``folder`` to a base through plain PEFT (``PeftModel.from_pretrained`` /
    ``load_adapter``); returns the TaskModel. The reference tests and benches compare loradex's own
    paths against (no production code calls it).

    Pass a LoadedBackbone for the first adapter, then the returned TaskModel for the others:
    they share the one base object.
    """
    from peft import PeftModel

    from loradex.core.artifact import HEAD_WEIGHTS, check_complete, check_fingerprint, load_weights, native_names
    from loradex.core.backbone import LoadedBackbone
    from loradex.core.errors import ArtifactError
    from loradex.core.model import TaskModel, new_head
    from loradex.core.scratch import scratch_folder

    folder = Path(folder)
    spec = check_complete(folder)
    if spec.is_multitask:
        raise ArtifactError(f"{folder}: a multi-task adapter ({', '.join(spec.tasks)}); attach it to a MultiTaskModel")
    if spec.task != task.name:
        raise ArtifactError(f"{folder}: adapter is for task {spec.task!r}, not {task.name!r}")
    if isinstance(model_or_backbone, LoadedBackbone):
        backbone, model = model_or_backbone, None
    else:
        model = model_or_backbone
        backbone = model.backbone
        if adapter_name in model.heads:
            raise ArtifactError(f"an adapter named {adapter_name!r} is already attached")
    check_fingerprint(spec, backbone.ref.fingerprint, where=str(folder), allow_mismatch=allow_base_mismatch)
    with scratch_folder("renamed") as scratch:
        source = native_names(folder, backbone, Path(scratch))
        try:
            if model is None:
                encoder = PeftModel.from_pretrained(backbone.model, str(source), adapter_name=adapter_name)
                model = TaskModel(backbone, encoder)
            else:
                model.encoder.load_adapter(str(source), adapter_name=adapter_name)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"{folder}: PEFT could not load the adapter ({exc})") from None
    head = new_head(task, backbone, spec)
    state = load_weights(folder / HEAD_WEIGHTS)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{folder / HEAD_WEIGHTS}: does not fit the {spec.task} head ({exc})") from None
    head.eval()
    model.add_head(adapter_name, head, spec)
    model.eval()
    return model
