"""Detection data readers, checks, metrics, predictions and a tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from loradex.core import plugins
from loradex.core.errors import DataError
from loradex.plugins.shapes import SCENE_SHAPES, scene_image


@pytest.fixture(scope="module")
def task():
    return plugins.get_task("detection")


def identity(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


def save_image(path, size=(100, 80)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (20, 40, 60)).save(path)
    return path


# --- synthetic scenes ---------------------------------------------------------------------

def test_synthetic_scenes_are_deterministic(task):
    a = task.load_data("synthetic:train=6,val=3,test=2", transform=identity, image_size=64)
    b = task.load_data("synthetic:train=6,val=3,test=2", transform=identity, image_size=64)
    assert a.head_config["labels"] == list(SCENE_SHAPES) == ["circle", "square", "triangle"]
    assert (len(a.train), len(a.val), len(a.test)) == (6, 3, 2)
    for (x, t), (y, u) in zip(a.train, b.train):
        assert torch.equal(x, y) and torch.equal(t["boxes"], u["boxes"]) and torch.equal(t["labels"], u["labels"])
    counts = [len(t["labels"]) for _, t in a.train]
    assert all(1 <= c <= 4 for c in counts)
    boxes = torch.cat([t["boxes"] for _, t in a.train])
    assert boxes.min() >= 0 and boxes.max() <= 1 and (boxes[:, 2:] > boxes[:, :2]).all()
    assert a.train[0][1]["size"].tolist() == [64.0, 64.0]
    c = task.load_data("synthetic:train=6,val=3,test=0,seed=1", transform=identity, image_size=64)
    assert not torch.equal(a.val[0][0], c.val[0][0]) and c.test is None


class _OneBox:
    """A 2-item split: a 48x48 black image with one white 12x6 bar at x 4..16, y 30..36 (no symmetry to hide behind)."""

    paths = ["a.png", "b.png"]

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        pixels = torch.zeros(3, 48, 48)
        pixels[:, 30:36, 4:16] = 1.0
        return pixels, {"boxes": torch.tensor([[4, 30, 16, 36]]) / 48.0, "labels": torch.tensor([1])}


def _bright_box(pixels):
    ys, xs = torch.nonzero(pixels[0] > 0.5, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32) / pixels.shape[-1]


def test_training_flips_and_turns_move_the_boxes_with_the_pixels(task):
    from loradex.core.spec import TrainSettings
    from loradex.plugins.detection.targets import Augmented

    data = task.load_data("synthetic:train=4,val=2", transform=identity, image_size=64)
    flipped = task.augment(data.train, TrainSettings(), head_config=data.head_config)  # fliplr 0.5 by default, as Ultralytics
    assert isinstance(flipped, Augmented) and (flipped.fliplr, flipped.flipud, flipped.rot90) == (0.5, 0.0, 0.0)
    assert flipped.targets is data.train.targets and len(flipped) == len(data.train)
    assert task.augment(data.train, TrainSettings(fliplr=0), head_config=data.head_config) is data.train
    torch.manual_seed(0)
    seen = set()
    for fliplr, flipud, rot90, draws in [(1, 0, 0, 4), (0, 1, 0, 4), (0, 0, 1, 8), (1, 1, 1, 8), (0.5, 0.5, 0.5, 64)]:
        for _ in range(draws):
            pixels, target = Augmented(_OneBox(), fliplr=fliplr, flipud=flipud, rot90=rot90)[0]
            assert torch.allclose(target["boxes"][0], _bright_box(pixels)), (fliplr, flipud, rot90)
            assert target["labels"].tolist() == [1]
            seen.add(tuple(target["boxes"][0].mul(48).round().int().tolist()))
    assert len(seen) == 8  # every orientation of the bar came up, each with its box


def test_flips_keep_an_image_without_boxes_and_a_non_square_image(task):
    from loradex.plugins.detection.targets import Augmented

    class Empty(_OneBox):
        def __getitem__(self, index):
            return torch.zeros(3, 32, 48), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}

    for _ in range(8):
        pixels, target = Augmented(Empty(), fliplr=1, flipud=1, rot90=1)[0]
        assert pixels.shape == (3, 32, 48) and target["boxes"].shape == (0, 4)  # no quarter turn off the square


def test_flip_probabilities_are_checked():
    from loradex.core.errors import SpecError
    from loradex.core.spec import TrainSettings

    with pytest.raises(SpecError, match="flipud must be a probability in \\[0, 1\\], got 2"):
        TrainSettings(flipud=2)
    with pytest.raises(SpecError, match="rot90"):
        TrainSettings(rot90="often")


def test_scene_boxes_frame_the_drawn_shapes():
    image, boxes, labels = scene_image(0, 5, 96)
    pixels = np.asarray(image).astype(float)
    for x0, y0, x1, y1 in boxes:
        inside = pixels[int(y0) + 2 : int(y1) - 1, int(x0) + 2 : int(x1) - 1]
        assert inside.max() > 150  # shapes are bright on a dark background
    assert len(boxes) == len(labels) >= 1


# --- COCO ---------------------------------------------------------------------------------

def coco_dict():
    """A file in pycocotools' own format: ids with gaps, a crowd region, segmentation and area."""
    return {
        "info": {"description": "written by another tool"},
        "licenses": [],
        "images": [
            {"id": 7, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.png", "width": 100, "height": 80},
            {"id": 11, "file_name": "c.png", "width": 100, "height": 80},
        ],
        "annotations": [
            {"id": 101, "image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200.0, "iscrowd": 0,
             "segmentation": [[10, 20, 40, 20, 40, 60, 10, 60]]},
            {"id": 102, "image_id": 7, "category_id": 1, "bbox": [50.5, 0, 49.5, 80], "area": 3960.0, "iscrowd": 0,
             "segmentation": []},
            {"id": 103, "image_id": 9, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 1,
             "segmentation": {"counts": [0, 100], "size": [80, 100]}},
            {"id": 104, "image_id": 11, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12.0, "iscrowd": 0,
             "segmentation": []},
        ],
        "categories": [{"id": 3, "name": "dog", "supercategory": "animal"},
                       {"id": 1, "name": "cat", "supercategory": "animal"}],
    }


def write_coco(root, data=None, images=("a.png", "b.png", "c.png"), name="annotations.json"):
    root.mkdir(parents=True, exist_ok=True)
    for image in images:
        save_image(root / "images" / image)
    path = root / name
    path.write_text(json.dumps(data or coco_dict()))
    return path


def test_coco_file_written_by_pycocotools_format_is_read(task, tmp_path):
    from pycocotools.coco import COCO

    path = write_coco(tmp_path / "coco")
    reference = COCO(str(path))  # pycocotools itself accepts the file
    assert sorted(reference.getCatIds()) == [1, 3]
    data = task.load_data(str(path), transform=identity, image_size=64, seed=0)
    assert data.head_config["labels"] == ["cat", "dog"]  # category names in id order
    items = {p.name: t for p, t in zip(data.train.paths + data.val.paths, data.train.targets + data.val.targets)}
    assert set(items) == {"a.png", "b.png", "c.png"} and len(data.val) == 1
    a = items["a.png"]
    expected = torch.tensor([[10 / 100, 20 / 80, 40 / 100, 60 / 80], [50.5 / 100, 0, 1, 1]])
    assert torch.allclose(a["boxes"], expected) and a["labels"].tolist() == [1, 0]
    assert a["size"].tolist() == [100.0, 80.0]
    assert len(items["b.png"]["labels"]) == 0  # the crowd region is skipped
    pixels, target = data.train[0]
    assert pixels.shape == (3, 80, 100) and set(target) == {"boxes", "labels", "size"}


def test_coco_folder_with_split_files(task, tmp_path):
    root = tmp_path / "coco"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    train = coco_dict()
    (ann / "instances_train2017.json").write_text(json.dumps(train))
    val = coco_dict()
    val["images"], val["annotations"] = val["images"][:1], val["annotations"][:2]
    (ann / "instances_val2017.json").write_text(json.dumps(val))
    for name in ("a.png", "b.png", "c.png"):
        save_image(root / "train2017" / name)
    save_image(root / "val2017" / "a.png")
    data = task.load_data(str(root), transform=identity, image_size=64)
    assert (len(data.train), len(data.val), data.test) == (3, 1, None)
    assert data.val.paths[0] == root / "val2017" / "a.png"
    assert data.head_config["labels"] == ["cat", "dog"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(bbox=[80, 20, 30, 40]),
     r"annotations\.json: annotation 101 \(image 'a\.png'\): box \[80, 20, 30, 40\] .* outside the 100x80 image"),
    (lambda d: d["annotations"][3].update(category_id=5),
     r"annotations\.json: annotation 104 \(image 'c\.png'\): category id 5 is not declared .*declared: 1, 3"),
    (lambda d: d["images"][1].update(file_name="missing.png"),
     r"annotations\.json: image 9 \(annotation 103\): image file 'missing\.png' does not exist"),
])
def test_coco_errors_name_file_and_annotation(task, tmp_path, change, message):
    data = coco_dict()
    change(data)
    path = write_coco(tmp_path / "coco", data)
    with pytest.raises(DataError, match=message):
        task.load_data(str(path), transform=identity, image_size=64)


# --- YOLO ---------------------------------------------------------------------------------

def write_yolo(root, lines=("1 0.5 0.5 0.2 0.4", "0 0.1 0.1 0.2 0.2"), layout="split"):
    for split in ("train", "val"):
        for i in range(3 if split == "train" else 2):
            folder = f"images/{split}" if layout == "split" else "images"
            save_image(root / folder / f"{split}{i}.png")
            labels = root / folder.replace("images", "labels") / f"{split}{i}.txt"
            labels.parent.mkdir(parents=True, exist_ok=True)
            if i != 2:  # an image without a label file has no objects
                labels.write_text("\n".join(lines) + "\n")
    if layout == "split":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    else:
        (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_yolo_split_folders(task, tmp_path):
    root = write_yolo(tmp_path / "yolo")
    data = task.load_data(str(root), transform=identity, image_size=64)
    assert data.head_config["labels"] == ["cat", "dog"]
    assert (len(data.train), len(data.val)) == (3, 2)
    target = data.train.targets[0]
    assert torch.allclose(target["boxes"], torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.0, 0.2, 0.2]]))
    assert target["labels"].tolist() == [1, 0] and target["size"].tolist() == [100.0, 80.0]
    assert len(data.train.targets[2]["labels"]) == 0


def test_yolo_flat_folder_with_classes_txt(task, tmp_path):
    root = write_yolo(tmp_path / "yolo", layout="flat")
    data = task.load_data(str(root), transform=identity, image_size=64, seed=1)
    assert (len(data.train), len(data.val)) == (4, 1)
    assert "one images/ folder split 80/20" in data.description


@pytest.mark.parametrize("lines, message", [
    (("0 0.5 0.5 0.2 0.2", "2 0.5 0.5 0.2 0.2"), r"train0\.txt:2: class id 2 is not declared in .*data\.yaml"),
    (("1 0.95 0.5 0.2 0.2",), r"train0\.txt:1: box 0\.95 0\.5 0\.2 0\.2 lies outside the image"),
])
def test_yolo_errors_name_file_and_line(task, tmp_path, lines, message):
    root = write_yolo(tmp_path / "yolo", lines=lines)
    with pytest.raises(DataError, match=message):
        task.load_data(str(root), transform=identity, image_size=64)


def test_yolo_label_without_image(task, tmp_path):
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"ghost\.txt: no image file for this label file"):
        task.load_data(str(root), transform=identity, image_size=64)


def test_not_a_detection_dataset(task, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a detection dataset"):
        task.load_data(str(tmp_path / "empty"), transform=identity, image_size=64)
    with pytest.raises(DataError, match="does not exist"):
        task.load_data(str(tmp_path / "nope"), transform=identity, image_size=64)


# --- metrics and post-processing ------------------------------------------------------------

def perfect_outputs(targets, num_labels=3, grid=16):
    """Head outputs that encode ``targets`` exactly: a peak at each centre cell, exact distances."""
    from loradex.plugins.detection.loss import cell_centres, image_targets

    heat = torch.full((len(targets), num_labels, grid, grid), -10.0)
    boxes = torch.full((len(targets), 4, grid, grid), 0.01)
    centres = cell_centres(grid, grid, torch.device("cpu"))
    for b, target in enumerate(targets):
        peaks, _, _ = image_targets(target["boxes"], target["labels"], num_labels, grid, grid)
        heat[b][peaks == 1] = 10.0
        for box in target["boxes"]:
            cx, cy = ((box[:2] + box[2:]) / 2 * grid).floor().long().tolist()
            c = centres[cy, cx]
            boxes[b, :, cy, cx] = torch.stack([c[0] - box[0], c[1] - box[1], box[2] - c[0], box[3] - c[1]])
    return {"heatmap": heat, "boxes": boxes}


def test_perfect_predictions_score_one_and_shifted_boxes_less(task):
    data = task.load_data("synthetic:train=1,val=6", transform=identity, image_size=64)
    targets = list(data.val.targets)
    metrics = task.metrics(data.head_config)
    metrics.update(perfect_outputs(targets), targets)
    result = metrics.compute().metrics
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert all(result[f"ap50_{name}"] == pytest.approx(1.0) for name in SCENE_SHAPES if f"ap50_{name}" in result)

    from loradex.plugins.detection.metrics import coco_evaluate

    truth = [(t["boxes"].numpy() * 64, t["labels"].numpy(), (64, 64)) for t in targets]
    shifted = [(b + np.array([4, 4, 4, 4]), np.ones(len(b)), l) for b, l, _ in truth]
    worse = coco_evaluate(list(SCENE_SHAPES), truth, shifted).metrics
    assert worse["map"] < 0.9 and worse["map50"] <= 1.0
    nothing = coco_evaluate(list(SCENE_SHAPES), truth, [(np.zeros((0, 4)), [], []) for _ in truth]).metrics
    assert nothing["map50"] == 0.0


def test_loss_is_lower_for_perfect_outputs(task):
    data = task.load_data("synthetic:train=4,val=1", transform=identity, image_size=64)
    targets = list(data.train.targets)
    good = task.loss(perfect_outputs(targets), targets)
    bad = task.loss({"heatmap": torch.zeros(4, 3, 8, 8), "boxes": torch.full((4, 4, 8, 8), 0.05)}, targets)
    assert torch.isfinite(good) and good < bad


def test_postprocess_returns_original_pixels(task):
    box = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    outputs = perfect_outputs([{"boxes": box, "labels": torch.tensor([2])}])
    (pred,) = task.postprocess(outputs, {"labels": list(SCENE_SHAPES)}, image_sizes=[(640, 480)])
    (det,) = pred["detections"]
    assert det["label"] == "triangle" and det["score"] > 0.99
    assert det["box"] == pytest.approx([160.0, 240.0, 480.0, 480.0], abs=0.2)
    drawn = task.draw(Image.new("RGB", (640, 480)), pred, {"labels": list(SCENE_SHAPES)})
    band = drawn.height - 480  # the summary line sits in a band above the image
    assert drawn.width == 640 and band > 0 and np.asarray(drawn)[band:].max() > 0
    small = task.draw(Image.new("RGB", (96, 64)), pred, {"labels": list(SCENE_SHAPES)})
    assert small.width == 576 and small.height > 384  # small images are enlarged so that labels stay legible


# --- training and the CLI -----------------------------------------------------------------

def test_one_epoch_training_writes_a_run(tmp_path):
    from loradex.core.training import TrainRequest, train_adapter

    request = TrainRequest(task="detection", data="synthetic:train=8,val=4",
                           train={"epochs": 1, "batch_size": 4, "image_size": 64}, project=tmp_path / "runs")
    outcome = train_adapter(request, progress=False, say=lambda line: None)
    assert {"map", "map50", "map75"} <= set(outcome.metrics)
    assert outcome.spec.head["labels"] == list(SCENE_SHAPES)
    run = outcome.run_dir
    for name in ("results.csv", "report.txt", "predictions/val_0.png"):
        assert (run / name).is_file(), name
    assert "map50" in (run / "report.txt").read_text()
    head_bytes = (outcome.artifact_dir / "head.safetensors").stat().st_size
    assert head_bytes < 1_000_000


def test_training_reads_the_split_through_the_flips_it_was_asked_for(tmp_path, monkeypatch):
    """--flipud/--rot90 reach the engine's training split (not the val split) and the stored spec."""
    from loradex.core.spec import AdapterSpec
    from loradex.core.training import TrainRequest, train_adapter
    from loradex.plugins.detection import targets

    made, items = [], []

    class Spy(targets.Augmented):
        def __init__(self, dataset, **probabilities):
            super().__init__(dataset, **probabilities)
            made.append(probabilities)

        def __getitem__(self, index):
            items.append(index)
            return super().__getitem__(index)

    monkeypatch.setattr(targets, "Augmented", Spy)
    said = []
    outcome = train_adapter(TrainRequest(task="detection", data="synthetic:train=8,val=4", project=tmp_path / "runs",
                                         train={"epochs": 1, "batch_size": 4, "image_size": 64, "flipud": 0.5,
                                                "rot90": 0.25, "workers": 0}), progress=False, say=said.append)
    assert made == [{"fliplr": 0.5, "flipud": 0.5, "rot90": 0.25}]
    assert sorted(items) == list(range(8))  # every training item, once, through the flips
    stored = AdapterSpec.from_json((outcome.artifact_dir / "loradex.json").read_text())
    assert (stored.train.fliplr, stored.train.flipud, stored.train.rot90) == (0.5, 0.5, 0.25)
    assert not [line for line in said if "does not apply" in line]


def test_cli_train_and_predict_json(tmp_path):
    from click.testing import CliRunner

    from loradex.registry.cli import cli

    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "detection", "--data", "synthetic:train=8,val=4", "--epochs", "1",
                                  "--batch-size", "4", "--image-size", "64", "--no-progress", "--json"])
    assert trained.exit_code == 0, trained.output
    image = save_image(tmp_path / "photo.png", size=(100, 80))
    # an untrained head scores low: keep every detection
    result = runner.invoke(cli, ["predict", "detection", str(image), "-o", "min_score=0", "--json",
                                 "--save", str(tmp_path / "drawn")])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    prediction = record["predictions"]["detection@v1"]
    assert record["image"] == str(image) and prediction["detections"]
    for det in prediction["detections"]:
        assert det["label"] in SCENE_SHAPES and 0 <= det["score"] <= 1
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 100 and 0 <= y0 <= y1 <= 80
    assert (tmp_path / "drawn" / "photo.png").is_file()
