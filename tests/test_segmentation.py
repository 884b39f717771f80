"""The segmentation task (plugins/segmentation): written through the public API only; data, training,
prediction with other tasks on one base, drawing, merged export, and each bad input as one line."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loradex.registry.cli import cli

PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "segmentation"


def run(*args, home=None):
    prefix = ["--home", str(home)] if home else []
    return CliRunner().invoke(cli, [*prefix, *map(str, args)])


def test_the_plugin_imports_only_the_public_loradex_api():
    """Issue 24: segmentation is written as a third-party author would write it."""
    imported = set()
    for path in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    loradex_modules = {m for m in imported if m.split(".")[0] == "loradex"}
    assert loradex_modules == {"loradex"}, loradex_modules


def test_run_lengths_round_trip():
    from loradex.plugins.segmentation.task import from_run_lengths, run_lengths

    mask = np.random.default_rng(0).integers(0, 4, size=(7, 9))
    assert (from_run_lengths(run_lengths(mask), (9, 7)) == mask).all()


def write_pairs(root: Path, *, count: int = 6, classes=("background", "thing"), mask_size=None, value=1) -> Path:
    """An images/ + masks/ folder: a bright square labelled ``value`` on each image."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for index in range(count):
        pixels = np.full((48, 64, 3), 40, dtype=np.uint8)
        pixels[10:30, 12 + index:36 + index] = 220
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[10:30, 12 + index:36 + index] = value
        picture = Image.fromarray(mask, "L")
        (picture.resize(mask_size, Image.NEAREST) if mask_size else picture).save(root / "masks" / f"{index}.png")
    return root


def test_train_predict_draw_and_export_merged(tmp_path, isolated_home):
    from loradex.core.multitask import MultiTaskModel
    from loradex.registry.store.registry import Registry
    from loradex.core import plugins

    from .registry_helpers import check_merged_export

    trained = run("train", "segmentation", "--data", "synthetic:train=32,val=16", "--epochs", "1", "--no-progress",
                  "--project", tmp_path / "runs", "--json")
    assert trained.exit_code == 0, trained.output
    out = json.loads(trained.stdout)
    assert {"miou", "pixel_accuracy", "iou_background"} <= set(out["metrics"])
    run_dir = tmp_path / "runs" / "segmentation" / "train"
    assert (run_dir / "per_class_iou.png").is_file() and (run_dir / "confusion_matrix.png").is_file()
    from loradex.plugins.segmentation.data import shapes_scene

    image = tmp_path / "scene.png"
    shapes_scene(5, 1, 96)[0].save(image)
    predicted = run("predict", "segmentation", image, "--json", "--save", tmp_path / "drawn")
    assert predicted.exit_code == 0, predicted.output
    (record,) = json.loads(predicted.stdout)
    answer = record["predictions"]["segmentation@v1"]
    assert answer["size"] == [96, 96] and sum(run[1] for run in answer["mask"]) == 96 * 96
    assert set(answer["coverage"]) <= set(answer["labels"])
    drawn = list((tmp_path / "drawn").glob("*.png"))
    assert drawn
    exported = run("export", "segmentation", tmp_path / "merged", "--merged")
    assert exported.exit_code == 0, exported.output
    model = MultiTaskModel(plugins.resolve_backbone("tiny-vit").load("tiny-vit"))
    with Registry.open() as registry:
        model.attach("segmentation@v1", registry.materialize("segmentation"))
    check_merged_export(tmp_path / "merged", model, "segmentation@v1", image)


def test_segmentation_and_classification_share_one_base(tmp_path):
    from .registry_helpers import random_shelf

    home = random_shelf(tmp_path, [("cls", "classification", {"seed": 1}), ("seg", "segmentation", {"seed": 2})])
    image = tmp_path / "photo.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(image)
    predicted = run("predict", "cls,seg", image, "--json", home=home)
    assert predicted.exit_code == 0, predicted.output
    (record,) = json.loads(predicted.stdout)
    assert list(record["predictions"]) == ["cls@v1", "seg@v1"]
    merged = run("merge", "cls", "seg", "--name", "both", "--json", home=home)
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout)["tasks"] == ["classification", "segmentation"]


def test_a_masks_folder_and_a_voc_folder_are_read(tmp_path):
    from loradex.core import plugins

    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    task = plugins.get_task("segmentation")
    data = task.read_data(str(write_pairs(tmp_path / "pairs", count=10)), backbone=backbone, image_size=64)
    assert data.head_config["labels"] == ["background", "thing"] and len(data.train) + len(data.val) == 10
    pixels, mask = data.train[0]
    assert tuple(pixels.shape) == (3, 64, 64) and tuple(mask.shape) == (64, 64) and set(mask.unique().tolist()) == {0, 1}
    voc = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    palette = [v for i in range(256) for v in ((i * 40) % 256, (i * 80) % 256, (i * 120) % 256)]
    for index in range(4):
        Image.new("RGB", (40, 30), (index * 30, 90, 90)).save(voc / "JPEGImages" / f"im{index}.jpg")
        labels = np.zeros((30, 40), np.uint8)
        labels[10:20, 10:20], labels[9, 9:21] = 15, 255  # a "person" and a piece of VOC's ignored border
        mask = Image.fromarray(labels, "P")
        mask.putpalette(palette)
        mask.save(voc / "SegmentationClass" / f"im{index}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("im0\nim1\nim2\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("im3\n")
    data = task.read_data(str(voc), backbone=backbone, image_size=64)
    assert len(data.head_config["labels"]) == 21 and len(data.train) == 3 and len(data.val) == 1
    assert {0, 15} <= set(data.val[0][1].unique().tolist()) <= {0, 15, 255}


def test_each_mask_file_is_decoded_once_however_many_epochs_read_it(tmp_path, monkeypatch):
    """Issue 24: masks were read and resized again every epoch (only images went through --cache)."""
    from loradex.core import plugins
    from loradex.plugins.segmentation import data as seg_data

    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    reads = []
    real = seg_data.read_mask
    monkeypatch.setattr(seg_data, "read_mask", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    data = plugins.get_task("segmentation").read_data(str(write_pairs(tmp_path / "pairs", count=6)),
                                                      backbone=backbone, image_size=64)
    first = [data.train[i][1] for i in range(len(data.train))]
    again = [data.train[i][1] for i in range(len(data.train))]  # a second epoch
    assert len(data.train) == 5 and len(reads) == len(set(reads)) <= 6  # loading and two epochs: once each
    assert all(torch_equal(a, b) and a.dtype == b.dtype for a, b in zip(first, again))


def test_an_adapter_without_levels_in_its_spec_keeps_its_single_map_head_on_a_cnn():
    """Adapters trained before levels existed record none: on a CNN they build the head they were
    trained with (no lateral layers), while a new spec records the levels the base offers."""
    from loradex import HeadContext
    from loradex.core import plugins

    task = plugins.get_task("segmentation")
    context = HeadContext(image_size=64, grid_size=(2, 2), stride=32, hidden_size=256, convolutional=True,
                          levels={8: 24, 16: 40})
    assert task.head_defaults(context) == {"levels": [8, 16]}
    assert task.head_defaults(HeadContext(image_size=64, grid_size=(8, 8), stride=8, hidden_size=192)) == {}
    old = task.build_head(hidden_size=256, grid_size=(2, 2), head_config={"labels": ["a", "b"], "channels": 32},
                          context=context)
    new = task.build_head(hidden_size=256, grid_size=(2, 2),
                          head_config={"labels": ["a", "b"], "channels": 32, "levels": [8, 16]}, context=context)
    assert not any("lateral" in k for k in old.state_dict())
    assert {k.split(".")[0] for k in new.state_dict()} >= {"lateral", "smooth"}
    code = task.export_head(hidden_size=256, grid_size=(2, 2),
                            head_config={"labels": ["a", "b"], "channels": 32, "levels": [16, 8]}, context=context)
    assert code.kwargs["levels"] == [[16, 40], [8, 24]]


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.parametrize(("change", "message"), [
    ({"mask_size": (32, 24)}, r"masks/(\d)\.png: mask is 32x24, its image \1\.png is 64x48"),
    ({"value": 7}, r"masks/\d\.png: class index 7 has no name \(2 classes; 255 is ignored\)"),
    ({"classes": ()}, r"classes\.txt: needs one class name per line"),
])
def test_bad_segmentation_data_is_one_line_naming_the_file(tmp_path, change, message):
    import re

    root = write_pairs(tmp_path / "d", **change)
    result = run("train", "segmentation", "--data", root, "--epochs", "1", "--no-progress", "--project", tmp_path / "r")
    assert result.exit_code != 0 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and re.search(message, last), last
    assert not (tmp_path / "r").exists()


def test_an_rgb_voc_mask_with_an_unknown_colour_is_named(tmp_path):
    from loradex.core.errors import DataError
    from loradex.plugins.segmentation.data import read_mask, voc_palette

    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[0, 0] = voc_palette()[15]
    path = tmp_path / "ok.png"
    Image.fromarray(pixels, "RGB").save(path)
    assert read_mask(path, 21, palette=True)[0, 0] == 15
    pixels[1, 1] = (1, 2, 3)
    Image.fromarray(pixels, "RGB").save(path)
    with pytest.raises(DataError, match=r"ok\.png: colour \(1, 2, 3\) is not a class colour of the VOC palette"):
        read_mask(path, 21, palette=True)


def test_coco_polygons_and_rle_become_semantic_masks(tmp_path):
    """Issue 24.1: COCO instance annotations (a polygon, an RLE, a crowd) painted into class masks."""
    from pycocotools import mask as mask_utils

    from loradex.core import plugins
    from loradex.core.errors import DataError

    images, annotations = [], []
    for index in range(5):
        Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / f"{index}.png")
        images.append({"id": index + 1, "file_name": f"{index}.png", "width": 64, "height": 48})
        annotations.append({"id": 10 * index + 1, "image_id": index + 1, "category_id": 7, "iscrowd": 0,
                            "segmentation": [[4, 4, 30, 4, 30, 30, 4, 30]], "area": 676, "bbox": [4, 4, 26, 26]})
        square = np.zeros((48, 64), dtype=np.uint8, order="F")
        square[20:40, 40:60] = 1
        rle = mask_utils.encode(square)
        rle["counts"] = rle["counts"].decode()
        annotations.append({"id": 10 * index + 2, "image_id": index + 1, "category_id": 9, "iscrowd": 0,
                            "segmentation": rle, "area": 400, "bbox": [40, 20, 20, 20]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    task = plugins.get_task("segmentation")
    loaded = task.read_data(str(tmp_path / "instances.json"), backbone=backbone, image_size=64)
    assert loaded.head_config["labels"] == ["background", "cat", "dog"]
    _, mask = loaded.train[0]
    assert set(mask.unique().tolist()) == {0, 1, 2}
    assert mask[int(12 * 64 / 48), 10] == 1 and mask[int(30 * 64 / 48), 50] == 2  # (row, col) at 64x64
    data["annotations"][0]["category_id"] = 3
    (tmp_path / "instances.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json: annotation 1 has category id 3, which 'categories' does "
                                        r"not declare"):
        task.read_data(str(tmp_path / "instances.json"), backbone=backbone, image_size=64)


def test_a_head_that_asks_for_its_context_gets_it_and_old_heads_need_nothing():
    """Issue 24.2: build_head gets a HeadContext (input size, grid, stride, width) when it takes one."""
    from loradex import ConfigError, HeadContext
    from loradex.core import plugins
    from loradex.plugins.segmentation.task import SegmentationTask

    seen = {}

    class Probe(SegmentationTask):
        def build_head(self, *, hidden_size, grid_size, head_config, context=None):
            seen["context"] = context
            return super().build_head(hidden_size=hidden_size, grid_size=grid_size, head_config=head_config,
                                      context=context)

    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    Probe().head_for(backbone, head_config={"labels": ["a", "b"], "upsample": 2}, image_size=96)
    assert seen["context"] == HeadContext(image_size=96, grid_size=(12, 12), stride=8, hidden_size=192)
    with pytest.raises(ConfigError, match="upsample 4 makes maps finer than the input: the finest map has 8 pixels"):
        Probe().head_for(backbone, head_config={"labels": ["a", "b"], "upsample": 4}, image_size=64)
    plugins.get_task("classification").head_for(backbone, head_config={"labels": ["a", "b"]}, image_size=64)


def test_canvas_mask_blends_the_labelled_pixels_only():
    """Canvas.mask (issue 24.2): labels with a colour are blended by alpha, others are left as they are."""
    from loradex import Canvas

    canvas = Canvas(Image.new("RGB", (4, 2), (100, 100, 100)), min_side=2)
    canvas.mask(np.array([[0, 1, 1, 2], [0, 0, 2, 2]]), colours={1: (200, 0, 0)}, alpha=0.5)
    pixels = np.asarray(canvas.finish())
    assert tuple(pixels[0, 1]) == (150, 50, 50) and tuple(pixels[0, 0]) == (100, 100, 100)
    assert tuple(pixels[1, 3]) == (100, 100, 100)  # label 2 has no colour
