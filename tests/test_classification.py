"""Classification data readers, metrics and predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loradex.core import plugins
from loradex.core.errors import DataError
from loradex.plugins.shapes import SHAPES, single_shape_image


@pytest.fixture(scope="module")
def task():
    return plugins.get_task("classification")


def identity(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


def write_folder(root, classes=("cat", "dog"), per_class=5, size=16):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (40 * c, 10 * i, 0)).save(root / name / f"{i}.png")
    return root


def test_synthetic_shapes_are_deterministic_and_balanced(task):
    a = task.load_data("synthetic:train=10,val=5,test=5", transform=identity, image_size=32)
    b = task.load_data("synthetic:train=10,val=5,test=5", transform=identity, image_size=32)
    assert a.head_config["labels"] == list(SHAPES) and len(SHAPES) >= 5
    assert all(torch.equal(x, y) for x, y in zip(a.train.tensors, b.train.tensors))
    assert sorted(a.train.targets) == sorted(list(range(5)) * 2)
    c = task.load_data("synthetic:train=10,val=5,test=0,seed=1", transform=identity, image_size=32)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0]) and c.test is None
    assert np.asarray(single_shape_image(0, 3, 32, 1)).std() > 10  # a shape is actually drawn


def test_bad_synthetic_options(task):
    with pytest.raises(DataError, match="'trian=5' is not one of .* Did you mean 'train'"):
        task.load_data("synthetic:trian=5", transform=identity, image_size=32)
    with pytest.raises(DataError, match="needs an integer"):
        task.load_data("synthetic:train=x", transform=identity, image_size=32)


def test_image_folder_with_split_folders(task, tmp_path):
    write_folder(tmp_path / "d" / "train")
    write_folder(tmp_path / "d" / "val", per_class=2)
    data = task.load_data(str(tmp_path / "d"), transform=identity, image_size=16)
    assert data.head_config["labels"] == ["cat", "dog"]
    assert (len(data.train), len(data.val), data.test) == (10, 4, None)
    pixels, label = data.train[7]
    assert pixels.shape == (3, 16, 16) and label == 1


def test_image_folder_split_by_seeded_ratio(task, tmp_path):
    write_folder(tmp_path / "flat", per_class=10)
    one = task.load_data(str(tmp_path / "flat"), transform=identity, image_size=16, seed=3)
    two = task.load_data(str(tmp_path / "flat"), transform=identity, image_size=16, seed=3)
    assert (len(one.train), len(one.val)) == (16, 4)
    assert one.val.paths == two.val.paths
    assert not set(one.val.paths) & set(one.train.paths)


def test_missing_data_folder(task, tmp_path):
    with pytest.raises(DataError, match="nope: data folder does not exist"):
        task.load_data(str(tmp_path / "nope"), transform=identity, image_size=16)


def test_empty_class_folder(task, tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "bird").mkdir()
    with pytest.raises(DataError, match=r"bird: class folder has no images"):
        task.load_data(str(root), transform=identity, image_size=16)


def test_unreadable_image(task, tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"broken.jpg: unreadable image"):
        task.load_data(str(root), transform=identity, image_size=16)


def test_val_class_unknown_to_train(task, tmp_path):
    write_folder(tmp_path / "d" / "train")
    write_folder(tmp_path / "d" / "val", classes=("cat", "emu"), per_class=1)
    with pytest.raises(DataError, match=r"classes \['emu'\] are not in"):
        task.load_data(str(tmp_path / "d"), transform=identity, image_size=16)


def test_metrics_match_scikit_learn(task):
    from sklearn.metrics import f1_score

    labels = ["a", "b", "c", "d"]
    logits = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 3.0], [2.0, 0, 1.0, 0], [0, 1, 2, 3.0]])
    targets = torch.tensor([0, 1, 2, 2, 3])
    acc = task.metrics({"labels": labels})
    acc.update(logits[:2], targets[:2])
    acc.update(logits[2:], targets[2:])
    result = acc.compute()
    preds = logits.argmax(1).numpy()
    assert result.metrics["accuracy"] == pytest.approx(3 / 5)
    assert result.metrics["f1_macro"] == pytest.approx(f1_score(targets.numpy(), preds, average="macro"))
    assert result.metrics["top3_accuracy"] == pytest.approx(1.0)
    assert result.details["confusion_matrix"][2] == [1, 0, 0, 1]
    assert set(result.details["per_class_f1"]) == set(labels)


def test_postprocess_top_k(task):
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    (pred,) = task.postprocess(logits, {"labels": ["x", "y", "z"]}, image_sizes=[(8, 8)], top_k=2)
    assert pred["label"] == "y" and [p["label"] for p in pred["top_k"]] == ["y", "z"]
    assert pred["score"] == pytest.approx(torch.softmax(logits, -1)[0, 1].item(), abs=1e-6)


def test_plots_are_written(task, tmp_path):
    acc = task.metrics({"labels": ["a", "b"]})
    acc.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    paths = task.plot(acc.compute(), {"labels": ["a", "b"]}, tmp_path)
    assert {p.name for p in paths} == {"confusion_matrix.png", "per_class_f1.png"}
    assert all(p.stat().st_size > 1000 for p in paths)
