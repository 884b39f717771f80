"""The engine and a whole training run: run folder, artifact, determinism, plain PEFT loading."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from loradex.core import plugins
from loradex.core.errors import ConfigError
from loradex.core.training import TrainRequest, train_adapter

SMALL = "synthetic:train=40,val=20,test=10"


def small_run(tmp_path, name="train", **train):
    request = TrainRequest(task="classification", data=SMALL, project=tmp_path / "runs", run_name=name,
                           train={"epochs": 2, "batch_size": 16, **train})
    return train_adapter(request, progress=False, say=lambda line: None)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("run"))


def test_run_folder_holds_everything(outcome):
    run = outcome.run_dir
    assert run.name == "train" and run.parent.name == "classification"
    assert len(list((run / "predictions").glob("val_*.png"))) == 8
    for name in ("args.yaml", "results.csv", "metrics.json", "report.txt", "loss_curves.png",
                 "confusion_matrix.png", "per_class_f1.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_f1_macro" in rows[0]
    assert all(0 < float(r["train_seconds"]) < float(r["seconds"]) for r in rows)
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"f1_macro", "accuracy", "test_f1_macro"} <= set(metrics)
    assert "confusion matrix" in (run / "report.txt").read_text()
    adapter = outcome.artifact_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "loradex.json", "README.md"):
        assert (adapter / name).is_file(), name


def test_numbered_run_folders(tmp_path):
    from loradex.core.runs import new_run_dir

    names = [new_run_dir(tmp_path, "pose").name for _ in range(3)]
    assert names == ["train", "train2", "train3"]


def test_same_seed_same_metrics(tmp_path, outcome):
    again = small_run(tmp_path)
    assert again.metrics == outcome.metrics
    a = load_file(str(outcome.artifact_dir / "adapter_model.safetensors"))
    b = load_file(str(again.artifact_dir / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plain_peft_loads_the_adapter_with_identical_weights(outcome):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    base = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    peft_model = PeftModel.from_pretrained(base.model, str(outcome.artifact_dir))
    loaded = get_peft_model_state_dict(peft_model)
    saved = load_file(str(outcome.artifact_dir / "adapter_model.safetensors"))
    assert set(loaded) == set(saved) and len(saved) > 0
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    trained = get_peft_model_state_dict(outcome.result.model.encoder)
    assert all(torch.equal(trained[k], saved[k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # LoRA actually trained


def test_attached_adapter_predicts_like_the_trained_model(outcome):
    from loradex.testing import attach

    task = plugins.get_task("classification")
    base = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    model = attach(base, task, outcome.artifact_dir)
    pixels = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        expected = outcome.result.model(pixels)
        assert torch.allclose(model(pixels), expected, atol=1e-5)


def test_early_stopping(tmp_path):
    run = small_run(tmp_path, epochs=6, patience=1, lr=1e-12, head_lr=1e-12)
    assert run.result.stopped_early and len(run.result.history) == 2


def test_gradient_accumulation_and_schedulers_run(tmp_path):
    run = small_run(tmp_path, epochs=1, grad_accum=2, scheduler="linear")
    assert len(run.result.history) == 1


def test_mixed_precision_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present, fp16 is allowed")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        small_run(tmp_path, mixed_precision="fp16")


def test_adapter_saved_with_pre_transformers_5_names_loads(outcome, tmp_path):
    """An adapter whose keys say attention.attention.query (transformers 4 ViT) loads on q_proj."""
    import json
    import re
    import shutil

    from safetensors.torch import save_file

    from loradex.testing import attach

    old = tmp_path / "old-names"
    shutil.copytree(outcome.artifact_dir, old)
    legacy = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
              "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}

    def old_name(key):
        match = re.match(r"^base_model\.model\.layers\.(\d+)\.(.+?)(\.lora_.*)$", key)
        index, module, rest = match.groups()
        return f"base_model.model.encoder.layer.{index}.{legacy[module]}{rest}"

    saved = load_file(str(outcome.artifact_dir / "adapter_model.safetensors"))
    save_file({old_name(k): v for k, v in saved.items()}, str(old / "adapter_model.safetensors"))
    config = json.loads((old / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "key", "value", "dense"]
    (old / "adapter_config.json").write_text(json.dumps(config))

    task = plugins.get_task("classification")
    base = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    model = attach(base, task, old)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(pixels), outcome.result.model(pixels), atol=1e-5)


def test_adapter_for_another_base_is_refused_unless_allowed(outcome, tmp_path):
    import json
    import shutil

    from loradex.testing import attach
    from loradex.core.errors import FingerprintMismatchError

    other = tmp_path / "other-base"
    shutil.copytree(outcome.artifact_dir, other)
    spec = json.loads((other / "loradex.json").read_text())
    spec["backbone"]["fingerprint"] = "sha256:" + "0" * 64
    (other / "loradex.json").write_text(json.dumps(spec))
    task = plugins.get_task("classification")
    base = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    with pytest.raises(FingerprintMismatchError, match="pass --allow-base-mismatch"):
        attach(base, task, other)
    assert attach(base, task, other, allow_base_mismatch=True).adapter_names == ["default"]


def test_a_flat_metric_does_not_stop_training_while_the_loss_falls():
    from loradex.core.engine import _improved

    assert _improved(0.0, 0.0, True, loss=6.4, best_loss=6.6)        # tie on the metric: lower loss wins
    assert not _improved(0.0, 0.0, True, loss=6.7, best_loss=6.6)
    assert not _improved(0.4, 0.5, True, loss=1.0, best_loss=9.0)    # the metric still comes first
    assert _improved(0.2, 0.5, False, loss=9.0, best_loss=1.0)


def test_max_train_samples_trains_on_that_many_images(tmp_path, monkeypatch):
    from loradex.core import engine

    seen, said = [], []
    original = engine.checked_batches

    def counted(loader):
        for batch in original(loader):
            seen.append(batch["pixel_values"].shape[0])
            yield batch

    monkeypatch.setattr(engine, "checked_batches", counted)
    request = TrainRequest(task="classification", data=SMALL, project=tmp_path / "runs",
                           train={"epochs": 1, "batch_size": 4, "max_train_samples": 10})
    train_adapter(request, progress=False, say=said.append)
    train_batches = seen[:3]  # then the validation and test passes
    assert train_batches == [4, 4, 2]
    assert any("training on 10 of the 40 training images" in line for line in said), said


def test_take_draws_a_seeded_subset_and_keeps_what_tasks_read(tmp_path):
    from loradex.core.data import ImageDataset
    from loradex.core.data.datasets import Subset, take

    paths = [tmp_path / f"{index}.png" for index in range(20)]
    images = ImageDataset(paths, list(range(20)), transform=lambda image: image)
    chosen = take(images, 5, seed=0)
    assert isinstance(chosen, ImageDataset) and len(chosen) == 5  # a dataset of its own: a cache holds only these
    assert chosen.targets == sorted(chosen.targets) and chosen.paths == [paths[t] for t in chosen.targets]
    assert take(images, 5, seed=0).targets == chosen.targets != take(images, 5, seed=1).targets
    assert take(images, 50, seed=0) is images

    class Kinds:
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return index

        def kinds(self):
            return ["od", "region", "phrase"] * 2

    some = take(Kinds(), 3, seed=2)
    assert isinstance(some, Subset) and len(some) == 3
    assert some.kinds() == [Kinds().kinds()[i] for i in some.indices] and list(some) == some.indices


def test_init_on_another_base_gives_advice_train_can_follow(tmp_path):
    """Issue 22.18: the error suggested --allow-base-mismatch, which `train` does not have."""
    from click.testing import CliRunner

    from loradex.registry.cli import cli

    from .registry_helpers import random_shelf

    home = random_shelf(tmp_path, [("cls", "classification", {"seed": 1})])
    result = CliRunner().invoke(cli, ["--home", str(home), "train", "classification", "--init", "cls",
                                      "--backbone", "vit-base", "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "--backbone tiny-vit" in last and "allow-base-mismatch" not in last, last
