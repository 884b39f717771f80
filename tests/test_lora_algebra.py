"""Every merge method's update against Σ wᵢ·ΔWᵢ; truncation error against the Eckart–Young bound."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from loradex.core.lora_runtime import LoraFactors
from loradex.registry.derive import lora_algebra as algebra
def factors(seed: int, rank: int, shape=(24, 20), scale: float = 2.0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(a=torch.randn(rank, shape[1], generator=g), b=torch.randn(shape[0], rank, generator=g),
                       scale=scale)


# two adapters of different ranks; "only_a" is a layer the second one does not change
A = {"q": factors(1, 4), "v": factors(2, 4), "only_a": factors(3, 4)}
B = {"q": factors(4, 8, scale=0.5), "v": factors(5, 8, scale=0.5)}
WEIGHTS = [0.7, 1.3]


def relative_error(merged, inputs, weights) -> float:
    exact = algebra.exact_sum(inputs, weights)
    err = sum(float(((merged[m].delta() - e) ** 2).sum()) for m, e in exact.items())
    return math.sqrt(err / sum(float((e ** 2).sum()) for e in exact.values()))


def test_cat_is_the_exact_weighted_sum_at_the_summed_rank():
    merged = algebra.merge_cat([A, B], WEIGHTS)
    assert relative_error(merged, [A, B], WEIGHTS) < 1e-6
    assert merged["q"].rank == 12 and merged["only_a"].rank == 4


def test_svd_at_full_rank_is_exact_and_truncation_costs_exactly_the_dropped_singular_values():
    full, errors = algebra.merge_svd([A, B], WEIGHTS, rank=12)
    assert relative_error(full, [A, B], WEIGHTS) < 1e-5 and all(e.relative_error < 1e-6 for e in errors)
    cut, errors = algebra.merge_svd([A, B], WEIGHTS, rank=5)
    exact = algebra.exact_sum([A, B], WEIGHTS)
    for error in errors:
        sigma = torch.linalg.svdvals(exact[error.module].double())
        bound = math.sqrt(float((sigma[5:] ** 2).sum()) / float((sigma ** 2).sum()))
        achieved = float((cut[error.module].delta().double() - exact[error.module].double()).norm()
                         / exact[error.module].double().norm())
        assert achieved == pytest.approx(bound, rel=1e-4, abs=1e-7)  # Eckart–Young: nothing does better
        assert error.relative_error == pytest.approx(bound, rel=1e-4, abs=1e-7)


def test_truncate_matches_eckart_young_and_reports_cosine_and_energy():
    f = factors(7, 16, shape=(48, 40))
    reference = f.delta().double()
    sigma = torch.linalg.svdvals(reference)
    for k in (1, 4, 8, 15, 16):
        cut, error = algebra.truncate(f, k)
        residual = float((cut.delta().double() - reference).norm() ** 2)
        assert residual == pytest.approx(float((sigma[k:] ** 2).sum()), rel=1e-6, abs=1e-6)
        assert error.cosine == pytest.approx(float(torch.nn.functional.cosine_similarity(
            cut.delta().double().flatten(), reference.flatten(), dim=0)), abs=1e-6)
        assert error.energy == pytest.approx(float((sigma[:k] ** 2).sum() / (sigma ** 2).sum()), rel=1e-6)
    assert algebra.rank_for_energy(f, 1.0) == 16
    share = float((sigma[:3] ** 2).sum() / (sigma ** 2).sum())
    assert algebra.rank_for_energy(f, share) == 3 and algebra.rank_for_energy(f, share + 1e-6) == 4


def test_knots_keeps_a_lone_update_exactly_and_aligns_identical_ones():
    merged = algebra.merge_knots([A, B], WEIGHTS, density=1.0)
    assert torch.allclose(merged["only_a"].delta(), WEIGHTS[0] * A["only_a"].delta(), atol=1e-5)
    same = algebra.merge_knots([A, copy.deepcopy(A)], [1.0, 1.0], density=1.0)
    assert torch.allclose(same["q"].delta(), A["q"].delta(), atol=1e-4)  # TIES averages agreeing coordinates


def test_knots_on_a_layer_with_fewer_outputs_than_the_summed_rank():
    """A narrow layer (16 outputs, ranks 8 + 16 = 24; a CNN's first pointwise conv) merges exactly at density 1."""
    narrow = [{"pw": factors(7, 8, shape=(16, 32))}, {"pw": factors(8, 16, shape=(16, 32))}]
    merged = algebra.merge_knots(narrow, [1.0, 1.0], density=1.0)
    assert merged["pw"].delta().shape == (16, 32)
    assert relative_error(merged, narrow, [1.0, 1.0]) < 0.6  # TIES: each coordinate's elected sign only
    lone = algebra.merge_knots([narrow[0], {}], [1.0, 1.0], density=1.0)
    assert torch.allclose(lone["pw"].delta(), narrow[0]["pw"].delta(), atol=1e-4)


def test_factorwise_methods_are_what_peft_add_weighted_adapter_computes():
    """PEFT itself is the oracle: same rank adapters in a PeftModel, merged by add_weighted_adapter."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(20, 24)

    model = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["q"], init_lora_weights=False),
                           adapter_name="first")
    model.add_adapter("second", LoraConfig(r=4, lora_alpha=8, target_modules=["q"], init_lora_weights=False))
    layer = model.base_model.model.q
    ours = [{"q": LoraFactors(a=layer.lora_A[n].weight.detach().clone(), b=layer.lora_B[n].weight.detach().clone(),
                              scale=layer.scaling[n])} for n in ("first", "second")]
    for method, density in (("linear", None), ("ties", 0.5), ("magnitude_prune", 0.5)):
        model.add_weighted_adapter(["first", "second"], WEIGHTS, f"m_{method}", combination_type=method, density=density)
        peft_delta = layer.get_delta_weight(f"m_{method}")
        approx = algebra.merge_factorwise(method, ours, WEIGHTS, density=density or 1.0)
        assert torch.allclose(approx["q"].delta(), peft_delta, atol=1e-5), method
        assert relative_error(approx, ours, WEIGHTS) > 0.05, method  # an approximation: the cross terms are there


def test_to_peft_pads_ranks_or_writes_a_rank_pattern_that_round_trips():
    from loradex.core.lora_runtime import factors_from_peft

    merged = {"layers.0.q": factors(1, 4), "layers.0.v": factors(2, 8)}
    for per_layer in (False, True):
        config, state = algebra.to_peft(merged, base_config={"peft_type": "LORA", "r": 3, "lora_alpha": 9},
                                        per_layer_rank=per_layer)
        back = factors_from_peft(config, state)
        for module, f in merged.items():
            assert torch.allclose(back[module].delta(), f.delta(), atol=1e-5), (per_layer, module)
        assert config["r"] == 8 and (config["rank_pattern"] == {r"layers\.0\.q": 4}) == per_layer


def test_joint_svd_from_factors_reconstructs_every_update():
    parts = [factors(11, 4), factors(12, 8, scale=0.5), factors(13, 2)]
    u, s, task_parts = algebra.joint_svd(parts)
    assert torch.allclose(u.t() @ u, torch.eye(u.shape[1]), atol=1e-5)  # an orthonormal shared basis
    for f, v in zip(parts, task_parts):
        assert torch.allclose((u * s) @ v, f.delta(), atol=1e-4)
    joint = torch.cat([f.delta().double() for f in parts], dim=1)
    assert torch.allclose(s.double(), torch.linalg.svdvals(joint)[: s.numel()], rtol=1e-4)
