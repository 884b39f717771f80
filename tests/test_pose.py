"""Pose: COCO keypoints and synthetic data, bad-input errors, metrics, postprocess, training, predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loradex.core import plugins
from loradex.core.errors import DataError

NAMES = ["nose", "left_wrist", "right_wrist", "left_ankle", "right_ankle"]


@pytest.fixture(scope="module")
def task():
    return plugins.get_task("pose")


def identity(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


def person(ann_id, image_id, box, points, visible=(2, 2, 2, 2, 1), category=1):
    kps = []
    for (x, y), v in zip(points, visible):
        kps += [float(x), float(y), v] if v else [0.0, 0.0, 0]
    return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0, "bbox": list(box),
            "area": box[2] * box[3] * 0.6, "num_keypoints": sum(1 for v in visible if v), "keypoints": kps}


def write_coco(root, *, edit=None, image_dir="images"):
    """Two images (one with two people) in COCO keypoints format, checked by pycocotools itself."""
    from pycocotools.coco import COCO

    (root / image_dir).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (100, 80), (30, 30, 30)).save(root / image_dir / "a.png")
    Image.new("RGB", (60, 90), (60, 20, 20)).save(root / image_dir / "b.jpg")
    data = {
        "info": {"description": "written like pycocotools expects"},
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                   {"id": 7, "file_name": "b.jpg", "width": 60, "height": 90}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": NAMES,
                        "skeleton": [[1, 2], [1, 3], [1, 4], [1, 5]]}],
        "annotations": [
            person(10, 1, (10, 10, 30, 50), [(25, 12), (12, 30), (38, 30), (15, 58), (35, 58)]),
            person(11, 1, (60, 20, 30, 40), [(75, 22), (62, 40), (88, 40), (65, 58), (85, 58)], visible=(2, 0, 2, 2, 2)),
            person(12, 7, (5, 5, 50, 80), [(30, 8), (8, 40), (52, 40), (15, 82), (45, 82)]),
        ],
    }
    if edit:
        edit(data)
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    if edit is None:
        coco = COCO(str(path))
        assert len(coco.getAnnIds(imgIds=[1])) == 2 and coco.loadCats(1)[0]["keypoints"] == NAMES
    return path


def test_coco_keypoints_file_is_read(task, tmp_path):
    path = write_coco(tmp_path)
    data = task.load_data(str(path), transform=identity, image_size=64, seed=0)
    head = data.head_config
    assert head["keypoints"] == NAMES and head["skeleton"] == [[0, 1], [0, 2], [0, 3], [0, 4]]
    assert head["flip_pairs"] == [[1, 2], [3, 4]]
    assert len(data.train) + len(data.val) == 3  # one sample per person
    samples = list(data.train.images.crops) + list(data.val.images.crops)
    targets = list(data.train.targets) + list(data.val.targets)
    # annotation 10: box (10,10,30,50) → square crop of side 1.25*50 = 62 centred on the box
    index = samples.index((-6, 4, 56, 66))
    target = targets[index]
    assert target["scale"].tolist() == [62.0, 62.0] and target["box"].tolist() == [30.0, 50.0]
    assert torch.allclose(target["keypoints"][0] * 62 + torch.tensor([-6.0, 4.0]), torch.tensor([25.0, 12.0]))
    hidden = next(t for t in targets if t["visible"].tolist() == [1, 0, 1, 1, 1])
    assert hidden["keypoints"][1].tolist() == [0.0, 0.0]


def test_coco_folder_with_split_files(task, tmp_path):
    path = write_coco(tmp_path)
    path.rename(tmp_path / "person_keypoints_train2017.json")
    (tmp_path / "person_keypoints_val2017.json").write_text((tmp_path / "person_keypoints_train2017.json").read_text())
    data = task.load_data(str(tmp_path), transform=identity, image_size=64)
    assert (len(data.train), len(data.val), data.test) == (3, 3, None)
    pixels, target = data.val[0]
    assert pixels.shape[0] == 3 and set(target) == {"keypoints", "visible", "scale", "box", "area"}
    assert "train person_keypoints_train2017.json" in data.description


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["annotations"][1].update(keypoints=[1.0, 2.0, 2] * 4),
     r"annotations.json: annotation 11: 'keypoints' must hold 3 x 5 = 15 numbers .* found 12"),
    (lambda d: d["annotations"][2].update(category_id=3),
     r"annotations.json: annotation 12: category_id 3 is not declared"),
    (lambda d: d["images"][1].update(file_name="missing.jpg"),
     r"annotations.json: image 7 \(annotation 12\): image file 'missing.jpg' does not exist"),
    (lambda d: d["annotations"][0].update(bbox=[80, 10, 30, 50]),
     r"annotations.json: annotation 10 \(image a.png\): box \[80, 10, 30, 50\] \(x, y, w, h\) lies outside the 100x80 image"),
])
def test_bad_coco_input_names_file_and_annotation(task, tmp_path, edit, message):
    path = write_coco(tmp_path, edit=edit)
    with pytest.raises(DataError, match=message):
        task.load_data(str(path), transform=identity, image_size=64)


def test_synthetic_figures_are_deterministic(task):
    a = task.load_data("synthetic:train=6,val=3,test=2", transform=identity, image_size=64)
    b = task.load_data("synthetic:train=6,val=3,test=2", transform=identity, image_size=64)
    assert a.head_config["keypoints"] == ["head", "left_hand", "right_hand", "left_foot", "right_foot"]
    assert a.head_config["flip_pairs"] == [[1, 2], [3, 4]]
    base_a, base_b = a.train, b.train
    assert all(torch.equal(x, y) for x, y in zip(base_a.tensors, base_b.tensors))
    assert all(torch.equal(x["keypoints"], y["keypoints"]) for x, y in zip(base_a.targets, base_b.targets))
    c = task.load_data("synthetic:train=6,val=3,test=0,seed=1", transform=identity, image_size=64)
    assert not torch.equal(base_a.tensors[0], c.train.tensors[0]) and c.test is None
    target = base_a.targets[0]
    assert ((target["keypoints"] >= 0) & (target["keypoints"] <= 1)).all()
    # left limbs hang off the image-right side: flipping swaps the pairs and mirrors x
    from loradex.core.spec import TrainSettings

    assert task.augment(a.train, TrainSettings(fliplr=0), head_config=a.head_config) is a.train
    augmented = task.augment(a.train, TrainSettings(), head_config=a.head_config)
    torch.manual_seed(0)
    flipped = [augmented[0] for _ in range(20)]
    mirrored = [t for p, t in flipped if torch.equal(p, base_a.tensors[0].flip(-1))]
    assert mirrored and torch.allclose(mirrored[0]["keypoints"][1, 0], 1 - target["keypoints"][2, 0])


def batch_of(points, scale=(100.0, 100.0), box=(50.0, 80.0)):
    n, k = points.shape[:2]
    return {"keypoints": points, "visible": torch.ones(n, k), "scale": torch.tensor([scale] * n),
            "box": torch.tensor([box] * n), "area": torch.full((n,), box[0] * box[1])}


def test_metrics_sanity(task):
    head = {"keypoints": ["a", "b", "c"]}
    truth = torch.rand(6, 3, 2, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    perfect = task.metrics(head)
    perfect.update({"coords": truth, "scores": torch.ones(6, 3)}, batch_of(truth))
    m = perfect.compute().metrics
    assert m["pck@0.05"] == 1.0 and m["pck@0.1"] == 1.0 and m["mean_pixel_error"] == 0.0
    assert m["oks_ap"] == pytest.approx(1.0)
    off = task.metrics(head)  # 6 px off in original pixels: under 0.1*80 but over 0.05*80
    off.update({"coords": truth + torch.tensor([0.06, 0.0]), "scores": torch.ones(6, 3)}, batch_of(truth))
    result = off.compute()
    assert result.metrics["pck@0.1"] == 1.0 and result.metrics["pck@0.05"] == 0.0
    assert result.metrics["mean_pixel_error"] == pytest.approx(6.0, abs=1e-4)
    assert result.metrics["oks_ap"] < 1.0
    assert result.details["per_keypoint"]["b"]["mean_pixel_error"] == pytest.approx(6.0, abs=1e-4)


def test_postprocess_returns_original_pixels(task):
    coords = torch.tensor([[[0.5, 0.25], [0.1, 0.9]]])
    outputs = {"coords": coords, "scores": torch.tensor([[0.9, 0.5]]), "heatmaps": torch.zeros(1, 2, 4, 4)}
    (pred,) = task.postprocess(outputs, {"keypoints": ["p", "q"]}, image_sizes=[(640, 480)], top_k=5)
    assert pred["keypoints"][0] == {"name": "p", "x": 320.0, "y": 120.0, "score": 0.9}
    assert pred["keypoints"][1]["x"] == 64.0 and pred["keypoints"][1]["y"] == 432.0
    assert pred["score"] == pytest.approx(0.7)
    drawn = task.draw(Image.new("RGB", (640, 480)), pred, {"skeleton": [[0, 1]]})
    assert drawn.width == 640 and drawn.height > 480 and np.asarray(drawn)[drawn.height - 480:].sum() > 0


def test_one_epoch_training_then_cli_predict_json(tmp_path, isolated_home):
    """A 1-epoch run through train_adapter, stored in the registry, then `adapters predict --json --save`."""
    from loradex.core.training import TrainRequest, train_adapter
    from loradex.plugins.pose.synthetic import stick_figure
    from loradex.registry.cli import cli
    from loradex.registry.store.registry import Registry

    request = TrainRequest(task="pose", data="synthetic:train=16,val=8,test=0", project=tmp_path / "runs",
                           train={"epochs": 1, "batch_size": 8, "image_size": 64})
    outcome = train_adapter(request, progress=False, say=lambda line: None)
    run = outcome.run_dir
    for name in ("results.csv", "report.txt", "loss_curves.png", "per_keypoint_error.png"):
        assert (run / name).is_file(), name
    assert len(list((run / "predictions").glob("val_*.png"))) == 8
    assert {"pck@0.05", "pck@0.1", "mean_pixel_error", "oks_ap"} <= set(outcome.metrics)
    assert outcome.spec.head["keypoints"][0] == "head"
    assert (outcome.artifact_dir / "head.safetensors").stat().st_size < 1_000_000
    with Registry.open(isolated_home) as registry:
        registry.put(outcome.artifact_dir, name="pose")

    image, _, _ = stick_figure(0, 5)
    image.resize((200, 100)).save(tmp_path / "wide.png")
    result = CliRunner().invoke(cli, ["predict", "pose", str(tmp_path / "wide.png"), "--json",
                                      "--save", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    pred = record["predictions"]["pose@v1"]
    assert [p["name"] for p in pred["keypoints"]][:2] == ["head", "left_hand"]
    assert all(0 <= p["x"] <= 200 and 0 <= p["y"] <= 100 and 0 <= p["score"] <= 1 for p in pred["keypoints"])
    assert (tmp_path / "out" / "wide.png").is_file()
