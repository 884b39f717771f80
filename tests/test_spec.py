"""AdapterSpec: exact JSON round trip, PEFT config, validation."""

from __future__ import annotations

import json

import pytest

from loradex.core.errors import SpecError
from loradex.core.spec import AdapterSpec, BackboneRef, LoraSettings, TrainSettings, parse_targets


def make_spec(**changes):
    spec = AdapterSpec(
        task="classification",
        backbone=BackboneRef(name="tiny-vit", fingerprint="sha256:abc", architecture="vit"),
        lora=LoraSettings(rank=8, alpha=16, dropout=0.1, targets=("attn.q", "attn.v"),
                          target_modules=r"^layers\.\d+\.(attention\.q_proj|attention\.v_proj)$"),
        head={"labels": ["a", "b", "c"], "pooling": "mean", "nested": {"k": [1, 2.5, None]}},
        train=TrainSettings(epochs=3, lr=3e-4, patience=2, seed=7),
        image_size=64,
    )
    return spec.replace(**changes) if changes else spec


def test_json_round_trip_is_exact():
    spec = make_spec()
    again = AdapterSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()
    assert isinstance(again.lora.targets, tuple)


def test_augmentations_are_left_out_of_the_json_at_their_defaults():
    plain = make_spec().to_dict()["train"]
    assert not {"fliplr", "flipud", "rot90"} & set(plain)  # specs from before the flips read the same
    aerial = make_spec(train=TrainSettings(flipud=0.5, rot90=0.5))
    assert {k: aerial.to_dict()["train"].get(k) for k in ("fliplr", "flipud", "rot90")} == {
        "fliplr": None, "flipud": 0.5, "rot90": 0.5}
    assert AdapterSpec.from_json(aerial.to_json()) == aerial
    assert AdapterSpec.from_json(make_spec(train=TrainSettings(fliplr=0)).to_json()).train.fliplr == 0


def test_head_is_normalised_to_json_values():
    spec = make_spec(head={"labels": ("a", "b")})
    assert spec.head == {"labels": ["a", "b"]}
    with pytest.raises(SpecError, match="JSON values"):
        make_spec(head={"bad": object()})


def test_to_lora_config():
    config = make_spec().to_lora_config()
    assert config.r == 8 and config.lora_alpha == 16 and config.lora_dropout == 0.1
    assert config.target_modules == r"^layers\.\d+\.(attention\.q_proj|attention\.v_proj)$"
    assert config.base_model_name_or_path == "tiny-vit"
    with pytest.raises(SpecError, match="not resolved"):
        make_spec(lora=LoraSettings()).to_lora_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": -3}, "rank must be a positive integer"),
    ({"alpha": 0}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
    ({"targets": "q,zz"}, "unknown LoRA target 'zz'"),
    ({"targets": ""}, "targets are empty"),
])
def test_bad_lora_settings(kwargs, message):
    with pytest.raises(SpecError, match=message):
        LoraSettings(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"lr": -1}, "lr"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"patience": 0}, "patience"),
])
def test_bad_train_settings(kwargs, message):
    with pytest.raises(SpecError, match=message):
        TrainSettings(**kwargs)


def test_target_shorthands():
    assert parse_targets("q,v") == ("attn.q", "attn.v")
    assert parse_targets(["mlp"]) == ("mlp.in", "mlp.out")
    assert len(parse_targets("all")) == 6


def test_from_dict_names_the_field_at_fault():
    data = json.loads(make_spec().to_json())
    data["lora"]["rnak"] = 4
    with pytest.raises(SpecError, match=r"loradex.json: lora: unknown setting 'rnak'. Did you mean 'rank'\?"):
        AdapterSpec.from_dict(data, source="loradex.json")
    with pytest.raises(SpecError, match="not valid JSON"):
        AdapterSpec.from_json("{", source="x.json")
    data = json.loads(make_spec().to_json())
    data["format"] = 99
    with pytest.raises(SpecError, match="format 99"):
        AdapterSpec.from_dict(data)


def test_machine_settings_are_not_stored_and_old_specs_holding_them_still_load(tmp_path, monkeypatch):
    """Issue 23.3: workers, cache and compile are how one machine runs a job; they were saved into every
    loradex.json and Hub card. Now they are runtime settings: in the run folder, not in the adapter."""
    from click.testing import CliRunner

    from loradex.core.spec import RUNTIME_FIELDS
    from loradex.registry.cli import cli
    from loradex.registry.store.registry import Registry

    spec = AdapterSpec(task="classification", backbone=BackboneRef(name="tiny-vit"))
    old = spec.to_dict()
    assert not set(RUNTIME_FIELDS) & set(old["train"])
    old["train"].update(workers=4, cache="disk", compile=True)  # what an adapter stored before held
    assert AdapterSpec.from_dict(old, source="old loradex.json") == spec
    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    trained = CliRunner().invoke(cli, ["train", "classification", "--data", "synthetic:train=16,val=8,test=0",
                                       "--epochs", "1", "--workers", "0", "--cache", "ram", "--no-progress",
                                       "--project", str(tmp_path / "runs"), "--json"])
    assert trained.exit_code == 0, trained.output
    with Registry.open() as registry:
        folder = registry.materialize("classification")
    stored = json.loads((folder / "loradex.json").read_text())
    assert not set(RUNTIME_FIELDS) & set(stored["train"])
    card = (folder / "README.md").read_text()
    assert "workers" not in card and "compile" not in card
    import yaml

    args = yaml.safe_load((tmp_path / "runs" / "classification" / "train" / "args.yaml").read_text())
    assert args["runtime"] == {"workers": 0, "cache": "ram", "compile": False}
