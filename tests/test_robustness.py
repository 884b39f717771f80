"""Training that diverges stores nothing; a plugin's failing plot loses nothing; 16-bit images keep their tones."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from loradex.core.data import open_image
from loradex.registry.cli import cli

SMALL = ["--data", "synthetic:train=10,val=10,test=0", "--epochs", "1", "--batch-size", "8", "--no-progress"]


def test_a_diverging_run_stores_nothing_and_says_why(monkeypatch, isolated_home, tmp_path):
    import torch

    from loradex.plugins.classification.task import ClassificationTask

    original = ClassificationTask.loss
    monkeypatch.setattr(ClassificationTask, "loss", lambda self, o, t: original(self, o, t) * torch.tensor(float("nan")))
    result = CliRunner().invoke(cli, ["train", "classification", *SMALL, "--project", str(tmp_path / "runs")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "training diverged in epoch 1, batch 1: the loss is nan; nothing was stored" in result.stderr
    assert json.loads(CliRunner().invoke(cli, ["list", "--json"]).stdout) == []


def test_a_failing_plot_or_drawing_keeps_the_trained_adapter(monkeypatch, isolated_home, tmp_path):
    from loradex.plugins.classification.task import ClassificationTask

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a plugin bug")

    monkeypatch.setattr(ClassificationTask, "plot", broken)
    monkeypatch.setattr(ClassificationTask, "render", broken)
    result = CliRunner().invoke(cli, ["train", "classification", *SMALL, "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "Warning: the task's plot failed (ZeroDivisionError: a plugin bug); the adapter is saved" in result.stderr
    assert "Warning: the task's draw failed" in result.stderr
    assert json.loads(CliRunner().invoke(cli, ["list", "--json"]).stdout)[0]["name"] == "classification"


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I")
    pixels = np.asarray(open_image(tmp_path / "deep.png"))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) == 16, "every tone survives"
    assert pixels[0, 1] == round(4369 / 65535 * 255)
