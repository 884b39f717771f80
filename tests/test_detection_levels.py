"""Issue 25 items 1-2: the per-level detection head (``head: {kind: fcos}``): a pyramid read from a
CNN or made from a ViT's one map (ViTDet's simple pyramid), FCOS's assignment (centre sampling,
one level per object size), its loss, NMS decoding, training, export and bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loradex.core import plugins
from loradex.core.backbone import EncoderOutput
from loradex.core.errors import ConfigError
from loradex.plugins.detection.decode import detections
from loradex.plugins.detection.level_loss import CENTRE_RADIUS, assign

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def task():
    return plugins.get_task("detection")


@pytest.fixture(scope="module")
def vit():
    return plugins.resolve_backbone("tiny-vit").load("tiny-vit")


def fcos_head(task, backbone, size: int, **config):
    return task.head_for(backbone, head_config={"labels": LABELS, "kind": "fcos", **config}, image_size=size)


def test_a_vit_gets_a_simple_pyramid_from_its_one_map(task, vit):
    """tiny-vit has one stride-8 map: the head makes strides 16 and 32 from it (max pooling) and, asked
    for stride 4, a transposed convolution up; every level's cells are in the flat outputs, finest first."""
    head = fcos_head(task, vit, 96)
    out = head(vit.encode(vit.model, torch.randn(2, 3, 96, 96)))
    sizes = [12 * 12, 6 * 6, 3 * 3]
    assert out["logits"].shape == (2, sum(sizes), 3) and out["boxes"].shape == (2, sum(sizes), 4)
    assert out["level"].tolist() == [0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2]
    torch.testing.assert_close(out["cells"][0], torch.tensor([1 / 12, 1 / 12]))
    torch.testing.assert_close(out["cells"][-1], torch.tensor([1 / 3, 1 / 3]))
    assert (out["boxes"][..., 2:] > out["boxes"][..., :2]).all()  # every cell's box has a positive size
    fine = fcos_head(task, vit, 96, strides=[4, 8])
    assert fine(vit.encode(vit.model, torch.randn(1, 3, 96, 96)))["logits"].shape == (1, 24 * 24 + 12 * 12, 3)
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in fine.modules())


def test_a_cnn_head_reads_its_stage_maps(task, tmp_path):
    """On a CNN the stride-8 and -16 maps are read (1x1 convs over their channels), stride 32 is its last map."""
    from .test_timm import timm_folder

    folder = timm_folder(tmp_path / "cnn", "test_efficientnet")
    cnn = plugins.resolve_backbone(str(folder)).load(str(folder))
    from loradex import HeadContext

    config = {"labels": LABELS, "kind": "fcos", **task.head_defaults(HeadContext.of(cnn, 64))}
    head = task.head_for(cnn, head_config=config, image_size=64)
    assert head.read == [8, 16] and isinstance(head.inlets["32"], torch.nn.Identity)
    assert head.inlets["8"][0].in_channels == cnn.feature_levels[8]
    features = cnn.encode(cnn.model, torch.randn(2, 3, 64, 64))
    out = head(features)
    assert out["logits"].shape == (2, 8 * 8 + 4 * 4 + 2 * 2, 3)
    # every output level read from the base: the last map is not projected (no unused weights)
    read_only = task.head_for(cnn, head_config={**config, "strides": [8, 16]}, image_size=64)
    assert read_only.proj is None and read_only(features)["logits"].shape == (2, 8 * 8 + 4 * 4, 3)
    # without the stage maps, stride 8 is made from the stride-32 map (4x up); stride 4 (8x) cannot be
    made = task.head_for(cnn, head_config={**config, "levels": [], "strides": [8]}, image_size=64)
    assert made.read == [] and made(features)["logits"].shape == (2, 8 * 8, 3)
    with pytest.raises(ConfigError, match="strides: 4 cannot be made from this base's stride-32 map"):
        task.head_for(cnn, head_config={**config, "strides": [4]}, image_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the cell layout stays float32 under autocast
        mixed = head(features)
    assert mixed["points"].dtype == torch.float32 and mixed["boxes"].dtype == torch.float32
    torch.testing.assert_close(mixed["points"], out["points"])


def layout(task, vit, size: int):
    """The points, cell sizes and levels of the head's cells at ``size`` pixels."""
    out = fcos_head(task, vit, size)(vit.encode(vit.model, torch.zeros(1, 3, size, size)))
    return out["points"], out["cells"], out["level"]


def test_assignment_takes_cells_near_the_centre_on_the_level_of_the_object_size(task, vit):
    points, cells, level = layout(task, vit, 256)  # 32x32 (stride 8), 16x16, 8x8 cells
    small = torch.tensor([0.10, 0.10, 0.20, 0.20])  # 25.6 px: 1.6 stride-8 cells from centre to side
    # 75 px from centre to side: from a cell within 1.5 cells of the centre, 75-99 px to the farthest
    # side on stride 16 (4-8 cells: level 1), at most 123 px on stride 32 (under 4 cells of 32 px)
    large = torch.tensor([0.20, 0.25, 0.20 + 150 / 256, 0.25 + 150 / 256])
    owner, regress = assign(points, cells, level, torch.stack([small, large]))
    assert set(level[owner == 0].tolist()) == {0} and set(level[owner == 1].tolist()) == {1}
    for index, box in enumerate((small, large)):
        mine = owner == index
        assert mine.sum() >= 4
        assert ((points[mine] > box[:2]) & (points[mine] < box[2:])).all()  # inside the box
        centre = (box[:2] + box[2:]) / 2
        assert ((points[mine] - centre).abs() / cells[mine] <= CENTRE_RADIUS).all()  # near its centre
        assert torch.equal(regress[mine], box.expand(int(mine.sum()), 4))
    # the background regresses nothing; no boxes at all: every cell is background
    assert (owner == -1).sum() == len(owner) - (owner >= 0).sum()
    none, _ = assign(points, cells, level, torch.zeros(0, 4))
    assert (none == -1).all()


def test_a_cell_two_objects_claim_goes_to_the_smaller(task, vit):
    points, cells, level = layout(task, vit, 256)
    inner = torch.tensor([0.45, 0.45, 0.55, 0.55])
    outer = torch.tensor([0.44, 0.44, 0.57, 0.57])  # same level, overlapping centre cells
    owner, _ = assign(points, cells, level, torch.stack([outer, inner]))
    alone, _ = assign(points, cells, level, outer[None])
    shared = (alone == 0) & (owner >= 0)
    assert shared.any() and (owner[shared] == 1).any() and (owner[shared & (owner == 1)] == 1).all()


def test_fitting_one_image_lowers_the_loss_and_finds_its_boxes(task, vit):
    """A real check of loss, assignment and decoding together: the head alone, on fixed features,
    learns two boxes of two classes; the two best detections after NMS are them."""
    torch.manual_seed(0)
    head = fcos_head(task, vit, 96)
    features = vit.encode(vit.model, torch.randn(1, 3, 96, 96))
    features = EncoderOutput(cls=features.cls.detach(), patches=features.patches.detach())
    boxes = torch.tensor([[0.10, 0.15, 0.40, 0.45], [0.55, 0.50, 0.95, 0.90]])
    target = [{"boxes": boxes, "labels": torch.tensor([0, 2])}]
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = task.loss(head(features), target)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first / 3
    with torch.no_grad():
        (found, scores, labels), = detections(head(features))
    from torchvision.ops import box_iou

    best = found[:2]
    assert sorted(labels[:2].tolist()) == [0, 2] and scores[1] > 0.5
    for box, label in zip(best, labels[:2]):
        assert box_iou(box[None], boxes[[0 if label == 0 else 1]]).item() > 0.7


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class_only(task):
    box = [0.1, 0.1, 0.5, 0.5]
    outputs = {"logits": torch.tensor([[[4.0, -20, -20], [3.0, -20, -20], [-20, 2.0, -20], [-20, -20, -20]]]),
               "centerness": torch.full((1, 4), 9.0),
               "boxes": torch.tensor([[box, [0.12, 0.1, 0.5, 0.52], box, [0.6, 0.6, 0.9, 0.9]]]),
               "points": torch.zeros(4, 2), "cells": torch.ones(4, 2), "level": torch.zeros(4, dtype=torch.long)}
    (found, scores, labels), = detections(outputs)
    assert labels.tolist() == [0, 1]  # the second class-0 box overlaps the first; class 1 is kept
    torch.testing.assert_close(found[0], torch.tensor(box))
    (_, high, _), = detections(outputs, min_score=0.95)
    assert len(high) == 1
    (pred,) = task.postprocess(outputs, {"labels": LABELS}, image_sizes=[(200, 100)])
    assert pred["detections"][0]["box"] == pytest.approx([20.0, 10.0, 100.0, 50.0])


@pytest.mark.parametrize(("head", "message"), [
    ({"kind": "yolo"}, "detection head kind must be one of centernet, fcos, got 'yolo'"),
    ({"kind": "fcos", "strides": [3]}, "strides: 3 cannot be made from this base's stride-8 map"),
    ({"kind": "fcos", "strides": "8"}, "strides must be a list of positive integers, got '8'"),
    ({"kind": "fcos", "levels": [16]}, "this base has no stride-16 map"),
])
def test_bad_head_options_are_one_line(task, vit, head, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task.head_for(vit, head_config={"labels": LABELS, **head}, image_size=96)


def test_trains_predicts_and_exports_merged(tmp_path, monkeypatch):
    """``head: {kind: fcos}`` through training (spec records it), the registry, prediction and
    ``export --merged`` (its README loader, without loradex, gives the same outputs)."""
    from click.testing import CliRunner
    from PIL import Image

    from loradex.core.multitask import MultiTaskModel
    from loradex.core.training import TrainRequest, train_adapter
    from loradex.registry.cli import cli
    from loradex.registry.store.registry import Registry

    from .registry_helpers import check_merged_export

    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    outcome = train_adapter(TrainRequest(task="detection", data="synthetic:train=8,val=4", project=tmp_path / "runs",
                                         train={"epochs": 1, "batch_size": 4, "image_size": 64, "workers": 0},
                                         head={"kind": "fcos"}), progress=False, say=lambda line: None)
    assert outcome.spec.head["kind"] == "fcos" and {"map", "map50"} <= set(outcome.metrics)
    with Registry.open() as registry:
        registry.put(outcome.artifact_dir, name="boxes")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(image)
    runner = CliRunner()
    predicted = runner.invoke(cli, ["predict", "boxes", str(image), "--json", "-o", "min_score=0"])
    assert predicted.exit_code == 0, predicted.output
    assert '"detections"' in predicted.output
    out = tmp_path / "export"
    exported = runner.invoke(cli, ["export", "boxes", str(out), "--merged"])
    assert exported.exit_code == 0, exported.output
    assert "class LevelDetectionHead" in (out / "heads" / "detection_level_head.py").read_text()
    with Registry.open() as registry:
        model = MultiTaskModel(plugins.resolve_backbone("tiny-vit").load("tiny-vit"))
        model.attach("boxes@v1", registry.materialize("boxes"))
    check_merged_export(out, model, "boxes@v1", image)


@pytest.mark.parametrize(("flags", "message"), [
    (["--head", "kind"], "Error: --head 'kind' is not KEY=VALUE (e.g. --head kind=fcos)"),
    (["--head", "kind=yolo"], "Error: detection head kind must be one of centernet, fcos, got 'yolo'"),
    (["--head", "strides=[8, 16"], "Error: --head strides: '[8, 16' is not a YAML value"),
    (["--head", "kind=fcos", "--head", "levels=[16]"], "Error: head levels: this base has no stride-16 map"),
])
def test_bad_head_flags_fail_in_one_line_before_the_run_folder(tmp_path, monkeypatch, flags, message):
    from click.testing import CliRunner

    from loradex.registry.cli import cli

    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["train", "detection", "--data", "synthetic:train=4,val=2", "--epochs", "1",
                                      "--image-size", "64", "--project", str(tmp_path / "runs"), *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == [
        next(line for line in result.output.splitlines() if message in line)]
    assert not (tmp_path / "runs").exists()


def test_head_flags_win_over_the_config_file(tmp_path, monkeypatch):
    """``--head kind=fcos --head width=32`` over a config's ``head: {width: 16, depth: 1}``: the spec
    records the flags' values and keeps the file's other settings."""
    from click.testing import CliRunner

    from loradex.registry.cli import cli
    from loradex.registry.store.registry import Registry

    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    config = tmp_path / "train.yaml"
    config.write_text("head:\n  width: 16\n  depth: 1\n")
    result = CliRunner().invoke(cli, ["train", "detection", "--data", "synthetic:train=4,val=2", "--epochs", "1",
                                      "--image-size", "64", "--batch-size", "4", "--workers", "0", "--no-progress",
                                      "--config", str(config), "--project", str(tmp_path / "runs"),
                                      "--head", "kind=fcos", "--head", "width=32"])
    assert result.exit_code == 0, result.output
    with Registry.open() as registry:
        head = registry.resolve("detection").spec.head
    assert (head["kind"], head["width"], head["depth"]) == ("fcos", 32, 1)
    built = plugins.get_task("detection").head_for(plugins.resolve_backbone("tiny-vit").load("tiny-vit"),
                                                  head_config=head, image_size=64)
    assert built.classes.in_channels == 32 and len(built.tower) == 1  # the settings reach the head
