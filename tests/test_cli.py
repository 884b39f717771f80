"""The `adapters` command line end to end: train → list → show → predict → eval, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from loradex.registry.cli import cli
from loradex.plugins.shapes import SHAPES, single_shape_image

from .test_plugins import install_fake_plugin

SMALL = ["--data", "synthetic:train=40,val=20,test=10", "--epochs", "1", "--batch-size", "16", "--no-progress"]


def run(*args, home=None):
    prefix = ["--home", str(home)] if home else []
    return CliRunner().invoke(cli, [*prefix, *map(str, args)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small adapter trained through the CLI, in a registry of its own."""
    root = tmp_path_factory.mktemp("cli")
    home = root / "home"
    result = run("train", "classification", *SMALL, "--project", root / "runs", "--name", "shapes", home=home)
    assert result.exit_code == 0, result.output
    return home, root


def assert_clean_failure(result, message, home):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, result.stderr
    listed = run("list", "--json", home=home)
    assert json.loads(listed.stdout) == [], "a failed command wrote to the registry"


def test_train_stores_a_version_and_list_shows_it(trained):
    home, root = trained
    assert run("list", "--json", home=home).exit_code == 0
    (entry,) = json.loads(run("list", "--json", home=home).stdout)
    assert entry["name"] == "shapes" and entry["task"] == "classification" and entry["latest"] == 1
    assert entry["headline"]["metric"] == "f1_macro" and 0 <= entry["headline"]["value"] <= 1
    assert entry["metrics"]["f1_macro"] == entry["headline"]["value"] and "test_accuracy" in entry["metrics"]
    shown = json.loads(run("show", "shapes@v1", "--json", home=home).stdout)
    assert {"f1_macro", "accuracy", "test_f1_macro"} <= set(shown["metrics"])
    assert (root / "runs" / "classification" / "train" / "results.csv").is_file()


def test_predict_json_and_saved_drawings(trained, tmp_path):
    home, _ = trained
    image = tmp_path / "star.png"
    single_shape_image(123, 4, 64, SHAPES.index("star")).save(image)
    result = run("predict", "shapes", image, "-o", "top_k=3", "--json", "--save", tmp_path / "drawn", home=home)
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["image"] == str(image) and list(record["predictions"]) == ["shapes@v1"]
    pred = record["predictions"]["shapes@v1"]
    assert pred["task"] == "classification" and pred["label"] in SHAPES and len(pred["top_k"]) == 3
    assert sum(p["score"] for p in pred["top_k"]) <= 1.0 + 1e-6
    assert (tmp_path / "drawn" / "star.png").is_file()


def test_predict_a_folder_with_decoding_threads_gives_the_same_records(trained, tmp_path):
    home, _ = trained
    for index in range(5):
        single_shape_image(200, index, 64, index % len(SHAPES)).save(tmp_path / f"{index}.png")
    records = {}
    for workers in ("0", "2"):
        result = run("predict", "shapes", tmp_path, "--json", "--batch-size", "2", "--workers", workers, home=home)
        assert result.exit_code == 0, result.output
        records[workers] = json.loads(result.stdout)
    assert len(records["0"]) == 5 and records["0"] == records["2"]


def test_eval_writes_a_report(trained, tmp_path):
    home, _ = trained
    result = run("eval", "shapes@v1", "--data", "synthetic:train=5,val=10,test=10", "--json",
                 "--project", tmp_path / "runs", home=home)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["split"] == "test" and "f1_macro" in data["metrics"]
    report = Path(data["run_dir"]) / "report.txt"
    assert "confusion matrix" in report.read_text()


def test_predict_missing_image(trained):
    home, _ = trained
    result = run("predict", "shapes", "nope.png", home=home)
    assert result.exit_code != 0 and "nope.png: no such image file" in result.stderr


def test_predict_unknown_version(trained):
    home, _ = trained
    result = run("predict", "shapes@v9", "x.png", home=home)
    assert result.exit_code != 0


def write_classes(root: Path) -> Path:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("case", [
    "missing-data", "empty-class", "unreadable-image", "unknown-task", "unknown-backbone", "rank-0",
    "bad-yaml", "config-unknown-key", "config-not-mapping", "bad-name", "bad-targets",
])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
    home = tmp_path / "home"
    args = ["train", "classification", "--epochs", "1", "--no-progress"]
    if case == "missing-data":
        args += ["--data", tmp_path / "nowhere"]
        message = "nowhere: data folder does not exist"
    elif case == "empty-class":
        root = write_classes(tmp_path / "d")
        (root / "c").mkdir()
        args += ["--data", root]
        message = "c: class folder has no images"
    elif case == "unreadable-image":
        root = write_classes(tmp_path / "d")
        (root / "a" / "bad.png").write_bytes(b"\x89PNG broken")
        args += ["--data", root]
        message = "bad.png: unreadable image"
    elif case == "unknown-task":
        args[1] = "clasification"
        message = "unknown task 'clasification'. Did you mean 'classification'?"
    elif case == "unknown-backbone":
        args += ["--backbone", "tiny-vitt"]
        message = "unknown backbone 'tiny-vitt'"
    elif case == "rank-0":
        args += ["--rank", "0"]
        message = "rank must be a positive integer, got 0"
    elif case == "bad-yaml":
        (tmp_path / "c.yaml").write_text("epochs: [1, 2\nlr: 3\n")
        args += ["--config", tmp_path / "c.yaml"]
        message = "c.yaml: not valid YAML at line"
    elif case == "config-unknown-key":
        (tmp_path / "c.yaml").write_text("epocs: 3\n")
        args += ["--config", tmp_path / "c.yaml"]
        message = "c.yaml: unknown key 'epocs'. Did you mean 'epochs'?"
    elif case == "config-not-mapping":
        (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
        args += ["--config", tmp_path / "c.yaml"]
        message = "c.yaml: expected a mapping"
    elif case == "bad-name":
        args += ["--name", "../x"]
        message = "../x"
    else:
        args += ["--targets", "q,w"]
        message = "unknown LoRA target 'w'"
    result = run(*args, home=home)
    assert_clean_failure(result, message, home)
    assert not (tmp_path / "runs").exists(), "a failed command left a run folder"


def test_config_file_values_and_flags(tmp_path):
    (tmp_path / "train.yaml").write_text(
        "data: synthetic:train=20,val=10,test=0\nepochs: 3\nbatch-size: 8\nrank: 4\ntargets: q,v\nname: fromfile\n")
    home = tmp_path / "home"
    result = run("train", "classification", "--config", tmp_path / "train.yaml", "--epochs", "1", "--no-progress",
                 "--json", home=home)
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "fromfile", "--json", home=home).stdout)
    spec = shown["spec"]
    assert spec["lora"]["rank"] == 4 and spec["lora"]["targets"] == ["attn.q", "attn.v"]
    assert spec["train"]["epochs"] == 1 and spec["train"]["batch_size"] == 8  # the flag won over the file


def test_broken_third_party_plugin_does_not_break_train(tmp_path, monkeypatch):
    from loradex.core import plugins

    install_fake_plugin(tmp_path / "site", "loradex-broken", "broken_plugin", "raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugins.reset()
    try:
        home = tmp_path / "home"
        result = run("train", "classification", "--data", "synthetic:train=10,val=5,test=0", "--epochs", "1",
                     "--no-progress", home=home)
        assert result.exit_code == 0, result.output
        assert "plugin 'broken_plugin' (from loradex-broken 0.1) is disabled" in result.stderr
        assert json.loads(run("list", "--json", home=home).stdout)[0]["name"] == "classification"
    finally:
        plugins.reset()


def test_example_plugin_trains_through_the_cli(tmp_path):
    home = tmp_path / "home"
    listed = json.loads(run("plugins", "--json").stdout)
    assert any(p["name"] == "brightness" and p["package"] == "loradex-example-task" for p in listed)
    result = run("train", "brightness", "--data", "synthetic:train=32,val=16", "--epochs", "1", "--no-progress",
                 "--json", home=home)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["primary_metric"] == "mae"


def test_tasks_json_names_the_plugins():
    data = json.loads(run("tasks", "--json").stdout)
    tasks = {t["name"]: t["plugin"] for t in data["tasks"]}
    assert tasks["classification"] == "loradex.plugins.classification"
    assert tasks["brightness"] == "brightness"
    assert {"tiny-vit", "vit-base", "hf"} <= {b["name"] for b in data["backbones"]}


def test_help_does_not_import_torch():
    code = "import sys; from loradex.registry.cli import cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "loradex.registry.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


def test_cli_reference_is_up_to_date():
    from loradex.registry.cli.reference import render_reference

    reference = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert reference == render_reference(cli), "regenerate: python -m loradex.registry.cli.reference > docs/cli.md"


def test_install_resolves_into_this_environment(capfd):
    """A real (dry-run) install of the example plugin with this environment's pip or uv."""
    root = Path(__file__).resolve().parents[1]
    result = run("install", "--dry-run", "-e", root / "docs" / "example-plugin")
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    assert "loradex-example-task" in captured.out + captured.err


def test_install_takes_several_editable_projects(capfd, tmp_path):
    """`-e A -e B` installs both (it used to install only B)."""
    root = Path(__file__).resolve().parents[1]
    other = tmp_path / "other-plugin"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "loradex-other-plugin"\nversion = "0.1"\n')
    result = run("install", "--dry-run", "-e", root / "docs" / "example-plugin", "-e", other)
    assert result.exit_code == 0, result.output
    out = capfd.readouterr()
    assert "loradex-example-task" in out.out + out.err and "loradex-other-plugin" in out.out + out.err


def test_install_needs_a_package():
    result = run("install")
    assert result.exit_code == 2 and "name at least one package" in result.output


def test_eval_refuses_data_with_other_labels(trained, tmp_path):
    home, _ = trained
    for name in ("cat", "dog"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(tmp_path / "d" / name / f"{i}.png")
    result = run("eval", "shapes", "--data", tmp_path / "d", home=home)
    assert result.exit_code != 0
    assert "labels ['cat', 'dog'] differ from the labels shapes@v1 was trained on" in result.stderr


def test_accelerate_launch_runs_the_same_command_on_two_processes(tmp_path):
    """Two CPU processes (gloo DDP): one run folder, one registry version, written by rank 0."""
    home = tmp_path / "home"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "loradex.registry.cli", "--home", str(home), "train", "classification",
               "--data", "synthetic:train=20,val=10,test=0", "--epochs", "1", "--no-progress"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["classification@v1"]
    assert [p.name for p in (tmp_path / "runs" / "classification").iterdir()] == ["train"]
    (entry,) = json.loads(run("list", "--json", home=home).stdout)
    assert entry["versions"] == 1 and "f1_macro" in entry["metrics"]
