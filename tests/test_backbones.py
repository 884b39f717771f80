"""Backbones: ViT-family encoders from local folders, presets, LoRA target resolution."""

from __future__ import annotations

import pytest
import torch

from loradex.core import plugins
from loradex.core.errors import BackboneError, UnknownNameError
from loradex.core.spec import TARGET_GROUPS

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


def _save(folder, model, processor):
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def _processor(size=32):
    import transformers

    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(size={"height": size, "width": size})


def build(arch: str, folder):
    import transformers as T

    torch.manual_seed(0)
    if arch == "vit":
        model = T.ViTModel(T.ViTConfig(intermediate_size=64, **SMALL), add_pooling_layer=False)
    elif arch == "deit":
        model = T.DeiTModel(T.DeiTConfig(intermediate_size=64, **SMALL), add_pooling_layer=False)
    elif arch == "dinov2":
        model = T.Dinov2Model(T.Dinov2Config(mlp_ratio=2, **SMALL))
    elif arch == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(intermediate_size=64, **SMALL))
    elif arch == "siglip":
        model = T.SiglipVisionModel(T.SiglipVisionConfig(intermediate_size=64, **SMALL))
    elif arch == "clip-full":
        config = T.CLIPConfig(
            vision_config=dict(intermediate_size=64, **SMALL),
            text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99),
            projection_dim=16,
        )
        model = T.CLIPModel(config)
    else:
        raise ValueError(arch)
    return _save(folder, model, _processor())


# (architecture, prefix tokens before the patch grid)
ARCHES = [("vit", 1), ("deit", 2), ("dinov2", 1), ("clip", 1), ("siglip", 0), ("clip-full", 1)]


@pytest.mark.parametrize("arch, prefix", ARCHES)
def test_hub_backbone_from_local_folder(arch, prefix, tmp_path):
    from peft import get_peft_model

    from loradex.core.spec import AdapterSpec, LoraSettings

    folder = build(arch, tmp_path / arch)
    backbone = plugins.resolve_backbone(str(folder)).load(str(folder))
    assert backbone.num_prefix_tokens == prefix
    assert backbone.image_size == 32 and backbone.grid_size == (4, 4)
    assert set(backbone.target_names) == set(TARGET_GROUPS["all"])  # a ViT has no separate vision tower
    assert backbone.ref.fingerprint.startswith("sha256:")
    assert not any(p.requires_grad for p in backbone.model.parameters())

    spec = AdapterSpec(task="t", backbone=backbone.ref,
                       lora=LoraSettings(rank=2, targets="all", target_modules=backbone.target_modules(TARGET_GROUPS["all"])))
    peft_model = get_peft_model(backbone.model, spec.to_lora_config())
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert len(lora_modules) == 2 * 6  # 2 blocks x 6 semantic targets, nothing outside the blocks
    features = backbone.encode(peft_model, torch.randn(3, 3, 32, 32))
    assert features.cls.shape == (3, 32) and features.patches.shape == (3, 4, 4, 32)


def test_target_names_follow_the_architecture(tmp_path):
    vit = plugins.resolve_backbone("hf").load(str(build("vit", tmp_path / "v")))
    clip = plugins.resolve_backbone("hf").load(str(build("clip", tmp_path / "c")))
    assert vit.target_names["attn.q"] == ("attention.q_proj",)
    assert clip.target_names["attn.o"] == ("self_attn.out_proj",)
    assert vit.target_modules(["attn.q", "attn.v"]) == r"^layers\.\d+\.(attention\.q_proj|attention\.v_proj)$"


def test_legacy_module_names_translate(tiny_backbone):
    old = "base_model.model.encoder.layer.3.attention.attention.query"
    assert tiny_backbone.translate_module_name(old) == "layers.3.attention.q_proj"
    assert tiny_backbone.translate_module_name("encoder.layer.0.output.dense") == "layers.0.mlp.fc2"
    assert tiny_backbone.translate_module_name("encoder.layer.0.attention.output.dense") == "layers.0.attention.o_proj"
    assert tiny_backbone.translate_module_name("pooler.dense") == "pooler.dense"


def test_preset_is_identical_every_time(tiny_backbone):
    again = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    assert again.ref.fingerprint == tiny_backbone.ref.fingerprint
    state_a, state_b = tiny_backbone.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_fingerprint_changes_with_any_weight(tmp_path):
    from loradex.core.backbone import fingerprint

    folder = build("vit", tmp_path / "v")
    backbone = plugins.resolve_backbone("hf").load(str(folder))
    before = fingerprint(backbone.model)
    with torch.no_grad():
        next(backbone.model.parameters()).view(-1)[0] += 1e-3
    assert fingerprint(backbone.model) != before


def test_unknown_backbone_suggests_a_preset():
    with pytest.raises(UnknownNameError, match="unknown backbone 'tiny-vti'. Did you mean 'tiny-vit'"):
        plugins.resolve_backbone("tiny-vti")


def test_missing_hub_repo_is_one_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="cannot load backbone 'nobody/nothing'"):
        plugins.resolve_backbone("nobody/nothing").load("nobody/nothing")


def test_pickle_only_checkpoint_is_refused(tmp_path):
    """A folder whose weights exist only as a pickle (pytorch_model.bin) is never unpickled."""
    folder = build("vit", tmp_path / "pickled")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="cannot load backbone"):
        plugins.resolve_backbone(str(folder)).load(str(folder))


def test_other_resolution_interpolates_position_embeddings(tiny_backbone):
    from PIL import Image

    transform = tiny_backbone.transform_at(96)
    pixels = transform(Image.new("RGB", (50, 30), (200, 10, 10)))
    assert pixels.shape == (3, 96, 96)
    with torch.inference_mode():
        features = tiny_backbone.encode(tiny_backbone.model, pixels[None])
    assert features.patches.shape[1:3] == tiny_backbone.grid_at(96) == (12, 12)
    with pytest.raises(BackboneError, match="not a multiple of the patch size"):
        tiny_backbone.transform_at(97)
