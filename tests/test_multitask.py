"""Many tasks on ONE base: the LoRA bank's mixed batches equal PEFT running one adapter at a time."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch

from loradex.testing import attach
from loradex.core.backbone import EncoderOutput
from loradex.core.lora_runtime import LoraBank, Segment, contiguous_plan, split_plan
from loradex.core.multitask import MultiTaskModel
from loradex.core.predictor import Predictor
from loradex.core import plugins
from loradex.testing import random_adapter

# three tasks, two input sizes, four ranks and four target sets on one base
ADAPTERS = {
    "cls": dict(task="classification", rank=4, targets="q,v", seed=1),
    "det": dict(task="detection", rank=16, targets="all", image_size=96, seed=2),
    "pose": dict(task="pose", rank=8, targets="attn", seed=3),
    "cls2": dict(task="classification", rank=2, targets="mlp", seed=4),
}


def fresh_backbone():
    return plugins.resolve_backbone("tiny-vit").load("tiny-vit")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    backbone = fresh_backbone()
    return {name: random_adapter(root / name, backbone=backbone, **options) for name, options in ADAPTERS.items()}


@pytest.fixture(scope="module")
def model(folders):
    model = MultiTaskModel(fresh_backbone())
    for name, folder in folders.items():
        model.attach(name, folder)
    return model


def peft_alone(folder, name):
    """The reference: PEFT with this one adapter on a base of its own."""
    task = plugins.get_task(ADAPTERS[name]["task"])
    return attach(fresh_backbone(), task, folder)


def tensors(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [v for _, v in sorted(outputs.items()) if isinstance(v, torch.Tensor)]


def test_every_adapter_shares_the_one_base_object(model):
    assert model.engine == "loradex" and list(model.adapters) == list(ADAPTERS)
    assert all(p.requires_grad is False for p in model.base.parameters())
    patched = [m for m in model.base.modules() if "forward" in m.__dict__]
    assert patched, "the bank patches the targeted layers of the base in place"
    assert {a.spec.lora.rank for a in model.adapters.values()} == {2, 4, 8, 16}


def test_mixed_batch_equals_each_adapter_alone_under_peft(model, folders):
    torch.manual_seed(0)
    for size in (64, 96):
        group = [name for name in ADAPTERS if model.adapters[name].heads[0].image_size == size]
        pixels = torch.randn(3, 3, size, size)
        # interleaved rows: image i goes through adapter i % K, as a server would receive them
        names = [group[i % len(group)] for i in range(3 * len(group))]
        rows = torch.stack([pixels[i % 3] for i in range(len(names))])
        order, plan = contiguous_plan([model.adapters[n].lora for n in names])
        features = model.encode_rows(rows[order], plan, batch_size=5)  # chunks cut across adapters
        for name in group:
            index = [i for i, n in enumerate(order) if names[n] == name]
            sub = EncoderOutput(cls=features.cls[index], patches=features.patches[index])
            with torch.inference_mode():
                mixed = model.adapters[name].heads[0].module(sub)
                alone = peft_alone(folders[name], name)(rows[[order[i] for i in index]])
            worst = max(float((a - b).abs().max()) for a, b in zip(tensors(mixed), tensors(alone)))
            assert worst <= 1e-5, f"{name}: max abs diff {worst}"


def test_predict_equals_one_adapter_at_a_time(model, folders, tmp_path):
    from loradex.plugins.shapes import scene_image

    images = [scene_image(7, i, 80)[0] for i in range(3)]
    together = model.predict(images, top_k=3)
    for name, folder in folders.items():
        alone = MultiTaskModel(fresh_backbone())
        alone.attach(name, folder)
        single = alone.predict(images, **({"top_k": 3} if "cls" in name else {}))
        for a, b in zip(together, single):
            assert a.results[name].prediction == b.results[name].prediction, name
    record = together[0].to_dict()
    assert list(record["predictions"]) == list(ADAPTERS)
    assert record["predictions"]["det"]["task"] == "detection" and record["width"] == 80


def test_base_is_left_exactly_as_it_was_after_detaching(folders):
    backbone = fresh_backbone()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = backbone.model(pixel_values=pixels).last_hidden_state.clone()
    model = MultiTaskModel(backbone)
    model.attach("cls", folders["cls"])
    with torch.inference_mode(), LoraBank.segments([Segment(model.adapters["cls"].lora, 0, 2)]):
        changed = backbone.model(pixel_values=pixels).last_hidden_state
    assert not torch.allclose(changed, before, atol=1e-3), "a random adapter must change the output"
    model.detach("cls")
    assert not [m for m in backbone.model.modules() if "forward" in m.__dict__]
    with torch.inference_mode():
        assert torch.equal(backbone.model(pixel_values=pixels).last_hidden_state, before)


def test_detaching_frees_the_adapter_and_its_head(folders):
    model = MultiTaskModel(fresh_backbone())
    model.attach("cls", folders["cls"])
    model.attach("pose", folders["pose"])
    factors = model._bank.factors(model.adapters["cls"].lora)
    watched = [weakref.ref(f.a) for f in factors.values()] + [weakref.ref(model.adapters["cls"].heads[0].module)]
    del factors
    model.detach("cls")
    gc.collect()
    assert all(ref() is None for ref in watched), "tensors of a removed adapter are still referenced"
    assert list(model.adapters) == ["pose"] and list(model.heads) == ["pose"]


def test_replace_keeps_the_base_and_the_order(folders):
    model = MultiTaskModel(fresh_backbone())
    for name in ("cls", "det", "pose"):
        model.attach(name, folders[name])
    base = model.base
    model.detach("det")
    model.attach("det", folders["det"])
    assert list(model.adapters) == ["cls", "pose", "det"] and model.base is base


def test_an_adapter_peft_must_run_switches_the_model_to_peft_with_one_notice(tmp_path, folders):
    backbone = fresh_backbone()
    dora = random_adapter(tmp_path / "dora", "classification", backbone=backbone, use_dora=True, seed=9)
    notes = []
    model = MultiTaskModel(backbone, say=notes.append)
    model.attach("cls", folders["cls"])
    model.attach("dora", dora)
    assert model.engine == "peft" and len(notes) == 1 and "DoRA" in notes[0]
    pixels = torch.randn(4, 3, 64, 64)
    for name, folder in (("cls", folders["cls"]), ("dora", dora)):
        with torch.inference_mode():
            reference = attach(fresh_backbone(), plugins.get_task("classification"), folder)(pixels)
        assert torch.allclose(model(pixels, adapter=name), reference, atol=1e-5), name
    model.detach("dora")
    model.detach("cls")
    assert model.engine == "loradex" and not model._peft_mode


def test_split_plan_cuts_segments_at_chunk_boundaries():
    plan = [Segment("a", 0, 3), Segment("b", 3, 7), Segment(None, 7, 8)]
    chunks = split_plan(plan, 4)
    assert chunks == [(0, 4, [Segment("a", 0, 3), Segment("b", 3, 4)]),
                      (4, 8, [Segment("b", 0, 3), Segment(None, 3, 4)])]
    order, plan = contiguous_plan(["b", "a", "b", None])
    assert order == [0, 2, 1, 3] and plan == [Segment("b", 0, 2), Segment("a", 2, 3), Segment(None, 3, 4)]


def test_factors_with_wrong_shapes_or_layers_are_refused(folders):
    from loradex.core.errors import ArtifactError
    from loradex.core.lora_runtime import LoraFactors

    bank = LoraBank(fresh_backbone().model)
    name = next(iter(bank._linears))
    with pytest.raises(ArtifactError, match="shapes"):
        bank.add("x", {name: LoraFactors(a=torch.zeros(4, 7), b=torch.zeros(3, 4), scale=1.0)})
    with pytest.raises(ArtifactError, match="no Linear layer"):
        bank.add("x", {"nope.q": LoraFactors(a=torch.zeros(4, 7), b=torch.zeros(3, 4), scale=1.0)})
    assert bank.names == []


def test_a_renamed_adapter_from_old_transformers_loads_into_the_bank(tmp_path, folders):
    """Keys saved as `encoder.layer.N.attention.attention.query` are renamed to this base's names."""
    import json

    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    old.mkdir()
    for f in folders["cls"].iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    state = load_file(str(folders["cls"] / "adapter_model.safetensors"))
    renamed = {k.replace("layers.", "encoder.layer.").replace("attention.q_proj", "attention.attention.query")
               .replace("attention.v_proj", "attention.attention.value"): v for k, v in state.items()}
    assert renamed != state
    save_file(renamed, str(old / "adapter_model.safetensors"))
    config = json.loads((old / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "value"]
    (old / "adapter_config.json").write_text(json.dumps(config))
    pixels = torch.randn(2, 3, 64, 64)
    new_model, old_model = MultiTaskModel(fresh_backbone()), MultiTaskModel(fresh_backbone())
    new_model.attach("a", folders["cls"])
    old_model.attach("a", old)
    assert torch.allclose(new_model(pixels), old_model(pixels), atol=1e-6)


def test_prediction_options_are_checked_per_task(model):
    from loradex.core.errors import ConfigError

    with pytest.raises(ConfigError, match="top_kk.*Did you mean 'top_k'"):
        model.predict("missing.png", top_kk=3)
    with pytest.raises(ConfigError, match="needs a int"):
        Predictor.options_for(model.head_entries(), {"top_k": "many"})
    with pytest.raises(ConfigError, match="top_k must be at least 1"):
        Predictor.options_for(model.head_entries(), {"classification.top_k": 0})
    chosen = Predictor.options_for(model.head_entries(), {"top_k": "2", "det.min_score": 0.5})
    assert chosen["cls"]["top_k"] == 2 and chosen["det"] == {"min_score": 0.5, "max_detections": 100}
    assert chosen["pose"] == {}


def test_dataclass_copy_of_backbone_is_untouched_by_random_adapter(tmp_path):
    backbone = fresh_backbone()
    random_adapter(tmp_path / "a", "classification", backbone=backbone)
    assert not any("lora" in n for n, _ in backbone.model.named_modules())
    assert dataclasses.is_dataclass(backbone)


def test_streaming_a_folder_is_lazy_and_threads_do_not_change_results(model, tmp_path, monkeypatch):
    from loradex.core.inputs import ImageInput
    from loradex.plugins.shapes import scene_image

    for index in range(10):
        scene_image(11, index, 64)[0].save(tmp_path / f"{index:02d}.png")
    plain = [r.results["cls"].prediction for r in model.stream(tmp_path, tasks="cls", batch_size=3, workers=0)]
    threaded = [r.results["cls"].prediction for r in model.stream(tmp_path, tasks="cls", batch_size=3, workers=2)]
    assert plain == threaded and len(plain) == 10

    loads = []
    original = ImageInput.load
    monkeypatch.setattr(ImageInput, "load", lambda self: loads.append(self) or original(self))
    results = model.stream(tmp_path, tasks="cls", batch_size=3, workers=2)
    first = next(results)
    assert first.source.endswith("00.png")
    assert len(loads) <= 6, "more than this batch and the next were decoded before the first result"
    assert len(list(results)) == 9 and len(loads) == 10


@pytest.mark.parametrize("scales", [(0.5, 0.5, 0.5, 0.5, 0.5), (0.5, 1.0, 2.0, 0.25, 3.0)])
def test_many_equal_segments_batched_together_equal_each_adapter_alone(scales, monkeypatch):
    """One row per adapter, as a server's batches are: the stacked (bmm) path gives each row its own update."""
    from loradex.core import lora_runtime
    from loradex.core.lora_runtime import GROUPED_MIN_SEGMENTS, LoraFactors

    grouped = []
    original = lora_runtime._grouped
    monkeypatch.setattr(lora_runtime, "_grouped", lambda *a: grouped.append(original(*a)) or grouped[-1])

    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 10)
    holder = torch.nn.Sequential(layer)
    bank = LoraBank(holder)
    for k, scale in enumerate(scales):
        bank.add(f"a{k}", {"0": LoraFactors(a=torch.randn(3, 12), b=torch.randn(10, 3), scale=scale)})
    x = torch.randn(len(scales) * 2, 2, 12)  # 2 images per adapter, 2 tokens each
    plan = [Segment(f"a{k}", 2 * k, 2 * k + 2) for k in range(len(scales))]
    assert len(plan) >= GROUPED_MIN_SEGMENTS
    with torch.inference_mode(), LoraBank.segments(plan):
        mixed = holder(x)
    assert grouped == [True]
    for k in range(len(scales)):
        with torch.inference_mode(), LoraBank.segments([Segment(f"a{k}", 0, 2)]):
            alone = holder(x[2 * k:2 * k + 2])
        assert torch.allclose(mixed[2 * k:2 * k + 2], alone, atol=1e-5)
    unequal = [*[Segment(f"a{k}", k, k + 1) for k in range(4)], Segment("a4", 4, 10)]
    with torch.inference_mode(), LoraBank.segments(unequal):  # four grouped, the large one merged
        mixed = holder(x)
    for k, (start, stop) in enumerate([(0, 1), (1, 2), (2, 3), (3, 4), (4, 10)]):
        with torch.inference_mode(), LoraBank.segments([Segment(f"a{k}", 0, stop - start)]):
            assert torch.allclose(mixed[start:stop], holder(x[start:stop]), atol=1e-5)
