"""`adapters predict REF[,REF...] INPUT...` and the Python API give the same records; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import loradex
from loradex.plugins.shapes import SHAPES, scene_image, single_shape_image
from loradex.registry.cli import cli
from loradex.registry.store.registry import Registry

from .registry_helpers import make_adapter, random_shelf


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    """A registry with a classification, a detection (96 px) and a pose adapter, and a folder of images."""
    root = tmp_path_factory.mktemp("shelf")
    home = random_shelf(root, [("cls", "classification", {"seed": 3}), ("det", "detection", {"seed": 3, "image_size": 96}),
                               ("pose", "pose", {"seed": 4, "targets": "all"})])
    with Registry.open(home) as registry:
        registry.tag("det@v1", "prod")
    images = root / "images"
    (images / "more").mkdir(parents=True)
    for i in range(3):
        single_shape_image(11, i, 64, i).save(images / f"shape{i}.png")
    scene_image(5, 0, 120)[0].save(images / "more" / "scene.jpg")
    (images / "notes.txt").write_text("not an image, and not named: left out of a folder")
    return home, images


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)])


def one_error_line(result, message):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.stderr


def test_three_tasks_on_a_folder_give_one_record_and_one_drawing_per_image(shelf, tmp_path):
    home, images = shelf
    result = run(home, "predict", "cls,det@prod,pose", images, "--json", "--save", tmp_path / "out")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["image"] for r in records] == [str(images / "more" / "scene.jpg")] + [
        str(images / f"shape{i}.png") for i in range(3)]
    for record in records:
        assert list(record["predictions"]) == ["cls@v1", "det@v1", "pose@v1"]
        assert [p["task"] for p in record["predictions"].values()] == ["classification", "detection", "pose"]
        assert record["base"]["name"] == "tiny-vit" and record["base"]["fingerprint"].startswith("sha256:")
        assert record["predictions"]["cls@v1"]["label"] in SHAPES
    drawings = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert drawings == ["scene.png", "shape0.png", "shape1.png", "shape2.png"]
    drawing = Image.open(tmp_path / "out" / "shape0.png")
    assert drawing.width >= 384 and drawing.height > drawing.width  # enlarged, with a 3-line legend band above


def test_the_python_api_gives_the_same_records_as_the_cli(shelf, monkeypatch):
    home, images = shelf
    cli_records = json.loads(run(home, "predict", "cls,det@prod,pose", images, "--json").stdout)
    model = loradex.load(["cls", "det@prod", "pose"], home=home)
    assert [r.to_dict() for r in model.predict(images)] == cli_records
    monkeypatch.setenv("LORADEX_HOME", str(home))
    pipe = loradex.pipeline("cls", top_k=2)
    single = pipe(str(images / "shape1.png"))
    assert single.to_dict() == {**cli_records[2]["predictions"]["cls@v1"],
                                "top_k": cli_records[2]["predictions"]["cls@v1"]["top_k"][:2]}
    array = np.asarray(Image.open(images / "shape1.png").convert("RGB"))
    assert pipe(array)["label"] == single["label"] and pipe(array / 255.0)["label"] == single["label"]
    assert [r["label"] for r in pipe([Image.open(images / "shape1.png"), array])] == [single["label"]] * 2


def test_plain_output_is_one_line_per_image_and_task(shelf):
    home, images = shelf
    result = run(home, "predict", "cls,pose", images / "shape0.png", images / "shape1.png", "-o", "top_k=2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    source, key, summary = lines[0].split("\t")
    assert source.endswith("shape0.png") and key == "cls@v1" and summary.split()[0] in SHAPES


def test_a_glob_picks_the_matching_files(shelf):
    home, images = shelf
    result = run(home, "predict", "cls", str(images / "shape*.png"), "--json")
    assert [Path(r["image"]).name for r in json.loads(result.stdout)] == ["shape0.png", "shape1.png", "shape2.png"]


def test_a_file_that_is_not_an_image_is_named_and_skip_bad_predicts_the_rest(shelf, tmp_path):
    home, images = shelf
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    one_error_line(run(home, "predict", "cls", images / "shape0.png", bad), "broken.png: not a readable image")
    result = run(home, "predict", "cls", images / "shape0.png", bad, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    good, skipped = json.loads(result.stdout)
    assert good["predictions"]["cls@v1"]["label"] in SHAPES
    assert skipped["image"] == str(bad) and skipped["predictions"] == {} and "error" in skipped
    assert "skipped 1 unreadable image: " in result.stderr and "broken.png" in result.stderr


def test_an_empty_folder_is_refused(shelf, tmp_path):
    home, _ = shelf
    (tmp_path / "empty").mkdir()
    one_error_line(run(home, "predict", "cls", tmp_path / "empty"), "empty: folder has no images")


@pytest.mark.parametrize(("args", "message"), [
    (["clss", "IMAGES"], "no adapter named 'clss'"),
    (["cls,,pose", "IMAGES"], "has an empty entry"),
    (["cls@v7", "IMAGES"], "cls has no version v7; it has v1"),
    (["cls", "nope.png"], "nope.png: no such image file or folder"),
    (["cls", "nothing*.png"], "nothing*.png: no files match this pattern"),
    (["cls,det", "IMAGES", "-o", "top_kk=3"], "no chosen task takes the option 'top_kk'. Did you mean 'top_k'?"),
    (["cls", "IMAGES", "-o", "top_k"], "is not KEY=VALUE"),
    (["cls", "IMAGES", "-o", "top_k=0"], "top_k must be at least 1"),
    (["cls", "IMAGES", "--device", "cuda:7"], "device 'cuda:7'"),
    (["cls", "IMAGES", "--device", "toaster"], "is not a torch device"),
])
def test_bad_predict_input_is_one_line(shelf, args, message):
    home, images = shelf
    result = run(home, "predict", *[str(images) if a == "IMAGES" else a for a in args])
    one_error_line(result, message)
    if "clss" in args[0]:
        assert "Did you mean 'cls'?" in result.stderr


def test_adapters_on_different_bases_are_refused_naming_both(shelf, tmp_path):
    home, images = shelf
    other = make_adapter(tmp_path / "other", fingerprint="sha256:" + "cd" * 32)
    with Registry.open(home) as registry:
        registry.put(other, name="elsewhere")
    try:
        result = run(home, "predict", "cls,elsewhere", images)
        one_error_line(result, "cls@v1 is on base 'tiny-vit' (sha256:")
        assert "elsewhere@v1 on 'tiny-vit' (sha256:cdcdcdcdcdcd" in result.stderr
    finally:
        with Registry.open(home) as registry:
            registry.remove("elsewhere")


def test_add_remove_and_replace_keep_the_base_loaded(shelf):
    home, images = shelf
    model = loradex.load("cls", home=home)
    base = model.base
    model.add("pose")
    with Registry.open(home) as registry:
        registry.put(registry.materialize("cls@v1"), name="cls")  # cls@v2, same weights
    model.replace("cls", "cls@v2")
    assert list(model.adapters) == ["cls@v2", "pose@v1"] and model.base is base
    with pytest.raises(loradex.NotFoundError, match="not attached"):
        model.remove("det")
    with pytest.raises(loradex.NotFoundError, match="no adapter named 'nope'"):
        model.replace("pose", "nope")
    assert list(model.adapters) == ["cls@v2", "pose@v1"], "a failed replace changes nothing"
    model.remove("cls@latest")
    (result,) = model.predict(images / "shape0.png")
    assert list(result.results) == ["pose@v1"]
    with Registry.open(home) as registry:
        registry.remove("cls@v2")


def test_results_draw_and_save(shelf, tmp_path):
    home, images = shelf
    model = loradex.load(["cls", "det", "pose"], home=home)
    (result,) = model.predict(images / "more" / "scene.jpg", tasks=["det", "pose"])
    assert list(result.results) == ["det@v1", "pose@v1"]
    assert result["det"].task.name == "detection" and result["pose"]["keypoints"]
    saved = result.save(tmp_path / "both.png")
    assert Image.open(saved).width == 480  # 120 px enlarged 4x
    single = result["pose@v1"].save(tmp_path / "pose.png")
    assert Image.open(single).height < Image.open(saved).height  # one legend line instead of two
    with pytest.raises(KeyError, match="is not among the results"):
        result["cls"]


def test_a_non_finite_score_becomes_null_so_the_record_is_valid_json():
    """Issue 22.3: `"score": NaN` is not JSON; a record must always parse."""
    from loradex.core import plugins
    from loradex.core.results import BaseInfo, ImageResult, TaskResult

    task = plugins.get_task("classification")
    result = ImageResult(source="x.png", width=4, height=4, base=BaseInfo("tiny-vit", None, "sha256:0"))
    result.results["cls@v1"] = TaskResult(key="cls@v1", task=task, prediction={
        "label": "a", "score": float("nan"), "top_k": [{"label": "a", "score": float("inf")}]})
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["predictions"]["cls@v1"] == {"task": "classification", "label": "a", "score": None,
                                                         "top_k": [{"label": "a", "score": None}]}
