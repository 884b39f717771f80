"""The example plugin's tests: loradex's task contract, and training through `adapters` in a registry of its own."""

from __future__ import annotations

from click.testing import CliRunner

from loradex import cli
from loradex.testing import TaskContract, loradex_home  # noqa: F401 - a fixture


class TestBrightnessContract(TaskContract):
    task = "brightness"
    data = "synthetic:train=8,val=8"


def test_train_and_predict(loradex_home, tmp_path):  # noqa: F811 - the fixture
    from loradex_example_task.task import synthetic_image

    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "brightness", "--data", "synthetic:train=32,val=16", "--epochs", "1",
                                  "--no-progress", "--project", str(tmp_path / "runs")])
    assert trained.exit_code == 0, trained.output
    assert (loradex_home / "index.db").is_file(), "the registry is the test's own"
    synthetic_image(0, 1, 64).save(tmp_path / "grey.png")
    predicted = runner.invoke(cli, ["predict", "brightness", str(tmp_path / "grey.png"), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert "brightness" in predicted.stdout
