"""Many tasks on ONE base: every adapter attaches to the same base object and runs under its own name."""

from __future__ import annotations

import pytest
import torch

from loradex.core.training import TrainRequest, train_adapter
from loradex.registry.loading import load_versions
from loradex.registry.store import Registry

TASKS = {
    "classification": "synthetic:train=20,val=10,test=0",
    "detection": "synthetic:train=8,val=4,test=0",
    "pose": "synthetic:train=8,val=4,test=0",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry holding one small adapter of each built-in task."""
    root = tmp_path_factory.mktemp("multi")
    registry = Registry.open(root / "home")
    for task, data in TASKS.items():
        outcome = train_adapter(
            TrainRequest(task=task, data=data, project=root / "runs", train={"epochs": 1, "batch_size": 8}),
            progress=False, say=lambda line: None,
        )
        registry.put(outcome.artifact_dir, name=task)
    return registry


def test_three_tasks_share_one_base_object(registry):
    loaded = load_versions(registry, list(TASKS))
    model = loaded.model
    assert sorted(model.adapter_names) == sorted(loaded.keys.values()) and len(model.adapter_names) == 3
    peft_adapters = set(model.encoder.peft_config)
    assert peft_adapters == set(model.adapter_names)
    bases = {id(model.encoder.get_base_model())}
    assert len(bases) == 1
    # one copy of the base weights: every LoRA layer of every adapter wraps the same base Linear
    layer = next(m for n, m in model.encoder.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) == 3)
    assert set(layer.lora_A) == peft_adapters


def test_each_adapter_on_the_shared_base_matches_it_alone(registry):
    loaded = load_versions(registry, list(TASKS))
    torch.manual_seed(0)
    for ref, key in loaded.keys.items():
        size = loaded.records[ref].spec.image_size
        pixels = torch.randn(2, 3, size, size)
        alone = load_versions(registry, [ref]).model
        with torch.inference_mode():
            shared_out = loaded.model(pixels, adapter=key)
            alone_out = alone(pixels)
        for a, b in zip(_tensors(shared_out), _tensors(alone_out)):
            assert torch.allclose(a, b, atol=1e-5), ref


def test_mixed_batch_matches_one_adapter_at_a_time(registry):
    size = registry.resolve("classification").spec.image_size
    refs = [r for r in TASKS if registry.resolve(r).spec.image_size == size]
    assert len(refs) >= 2, "a mixed batch needs two adapters at one input size"
    loaded = load_versions(registry, refs)
    keys = list(loaded.keys.values())
    pixels = torch.randn(2 * len(keys), 3, size, size)
    order = [keys[i % len(keys)] for i in range(len(pixels))]
    with torch.inference_mode():
        mixed = loaded.model.forward_mixed(pixels, order)
        for key in keys:
            index, outputs = mixed[key]
            single = loaded.model(pixels[index], adapter=key)
            for a, b in zip(_tensors(outputs), _tensors(single)):
                assert torch.allclose(a, b, atol=1e-5), key


def _tensors(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [v for k, v in sorted(outputs.items()) if isinstance(v, torch.Tensor)]
    return [v for v in outputs if isinstance(v, torch.Tensor)]
