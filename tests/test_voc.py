"""Pascal VOC XML for detection, as LabelImg writes it: layouts, training, and the checks on load."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from loradex.core import plugins
from loradex.core.errors import DataError


def voc_xml(filename: str, size, objects, *, declared_size=None) -> str:
    """An annotation in LabelImg's layout (``objects``: (name, xmin, ymin, xmax, ymax))."""
    width, height = declared_size or size
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2 in objects)
    return (f"<annotation><folder>images</folder><filename>{filename}</filename>"
            f"<path>/home/someone/labelimg/{filename}</path><source><database>Unknown</database></source>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{body}</annotation>")


def write_voc(root, *, layout="split", extra=None, classes=None):
    """A small VOC dataset: red squares ("box") and blue squares ("tile") on grey."""
    from PIL import ImageDraw

    splits = {"train": 6, "val": 2} if layout == "split" else {"": 8}
    for split, count in splits.items():
        folder = root / split if split else root
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = Image.new("RGB", (96, 80), (128, 128, 128))
            draw = ImageDraw.Draw(image)
            draw.rectangle((10, 10, 40, 40), fill=(220, 20, 20))
            draw.rectangle((50, 30, 85, 70), fill=(20, 20, 220))
            name = f"{split or 'img'}_{index}.jpg"
            image.save(folder / name)
            objects = [("box", 10, 10, 40, 40), ("tile", 50, 30, 85, 70)]
            (folder / f"{split or 'img'}_{index}.xml").write_text(voc_xml(name, (96, 80), objects), encoding="utf-8")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    if extra:
        extra(root)
    return root


def load(root):
    task = plugins.get_task("detection")
    return task.load_data(str(root), transform=lambda image: image, image_size=64, seed=0)


def test_labelimg_split_folders_are_read(tmp_path):
    data = load(write_voc(tmp_path / "voc"))
    assert data.head_config["labels"] == ["box", "tile"]
    assert len(data.train) == 6 and len(data.val) == 2 and data.test is None
    assert "Pascal VOC" in data.description and "16 boxes" in data.description
    _, target = data.train[0]
    assert target["labels"].tolist() == [0, 1]
    assert target["boxes"][0].tolist() == pytest.approx([10 / 96, 10 / 80, 40 / 96, 40 / 80])


def test_flat_labelimg_folder_splits_with_the_seed_and_classes_txt_orders_labels(tmp_path):
    data = load(write_voc(tmp_path / "voc", layout="flat", classes=["tile", "box", "other"]))
    assert data.head_config["labels"] == ["tile", "box", "other"]
    assert len(data.train) + len(data.val) == 8 and len(data.val) >= 1


def test_voc_dataset_layout_with_imagesets(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (50, 40)).save(root / "JPEGImages" / f"{index:06d}.jpg")
        (root / "Annotations" / f"{index:06d}.xml").write_text(
            voc_xml(f"{index:06d}.jpg", (50, 40), [("cat", 1, 1, 20, 20)]), encoding="utf-8")
    (root / "ImageSets" / "Main" / "train.txt").write_text("000000\n000001\n000002\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("000003\n")
    data = load(root)
    assert len(data.train) == 3 and len(data.val) == 1 and data.head_config["labels"] == ["cat"]


def _replace_in(split_file: str, old: str, new: str):
    def change(root):
        path = root / split_file
        path.write_text(path.read_text().replace(old, new), encoding="utf-8")
    return change


@pytest.mark.parametrize("change, message", [
    (_replace_in("train/train_1.xml", "<xmax>85</xmax>", "<xmax>120</xmax>"),
     r"train_1\.xml: object 1 \('tile'\): box 50,30,120,70 lies outside the 96x80 image train_1\.jpg"),
    (_replace_in("val/val_0.xml", "<name>tile</name>", "<name>tyle</name>"),
     r"val_0\.xml: object 1 \('tyle'\): class not in .*classes\.txt \(box, tile\)"),
    (_replace_in("train/train_2.xml", "<xmin>10</xmin>", "<xmin>ten</xmin>"),
     r"train_2\.xml: object 0 \('box'\): <xmin> is 'ten', not a number"),
    (_replace_in("train/train_2.xml", "<xmax>40</xmax>", "<xmax>5</xmax>"),
     r"train_2\.xml: object 0 \('box'\): box 10,10,5,40 is empty"),
    (_replace_in("train/train_3.xml", "</annotation>", ""), r"train_3\.xml:1: not well-formed XML"),
    (_replace_in("train/train_0.xml", "<width>96</width>", "<width>960</width>"),
     r"train_0\.xml: <size> says 960x80, but train_0\.jpg is 96x80"),
    (_replace_in("train/train_4.xml", "<name>box</name>", "<name></name>"), r"train_4\.xml: object 0: missing <name>"),
    (lambda root: (Image.new("RGB", (96, 80)).save(root.parent / "outside.jpg"),
                   _replace_in("train/train_4.xml", "<filename>train_4.jpg", "<filename>../../outside.jpg")(root)),
     r"train_4\.xml: file name '\.\./\.\./outside\.jpg' leads outside the data folder"),
])
def test_bad_annotations_name_file_and_object(tmp_path, change, message):
    root = write_voc(tmp_path / "voc", classes=["box", "tile"], extra=change)
    with pytest.raises(DataError, match=message):
        load(root)


def test_missing_image_is_named(tmp_path):
    root = write_voc(tmp_path / "voc")
    (root / "train" / "train_5.jpg").unlink()
    with pytest.raises(DataError, match=r"train_5\.xml: image 'train_5\.jpg' not found"):
        load(root)


def test_cli_trains_detection_from_voc_and_refuses_a_bad_box(tmp_path):
    from click.testing import CliRunner

    from loradex.registry.cli import cli

    root = write_voc(tmp_path / "voc")
    runner = CliRunner()
    done = runner.invoke(cli, ["train", "detection", "--data", str(root), "--epochs", "1", "--batch-size", "4",
                               "--image-size", "64", "--no-progress", "--json"])
    assert done.exit_code == 0, done.output
    assert "map50" in json.loads(done.stdout)["metrics"]
    _replace_in("val/val_1.xml", "<ymax>70</ymax>", "<ymax>99</ymax>")(root)
    refused = runner.invoke(cli, ["train", "detection", "--data", str(root), "--epochs", "1", "--no-progress",
                                  "--project", str(tmp_path / "runs2")])
    assert refused.exit_code != 0
    line = refused.output.strip().splitlines()[-1]
    assert "val_1.xml: object 1 ('tile'): box 50,30,85,99 lies outside the 96x80 image" in line
    assert not (tmp_path / "runs2").exists()
