"""Token embeddings trained beside the LoRA (``--tokens``, PEFT's ``trainable_token_indices``): trained,
saved in PEFT's format, served (through PEFT), merged, compressed, exported merged and imported."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from loradex.core.errors import BackboneError, SpecError
from loradex.core.spec import AdapterSpec, LoraSettings
from loradex.core.token_deltas import id_ranges
from loradex.plugins.grounding.data import scene
from loradex.registry.cli import cli

HEAD = {"labels": ["circle", "square", "triangle"], "kinds": ["od", "region", "phrase"]}
TINY = ["--epochs", "1", "--batch-size", "8", "--no-progress"]
DELTA = "base_model.model.model.language_model.shared.token_adapter.trainable_tokens_delta"


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


@pytest.fixture(scope="module")
def florence():
    from loradex.core import plugins

    return plugins.resolve_backbone("tiny-florence2").load("tiny-florence2")


def ids_of(florence, *tokens):
    return [florence.processor.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def inputs(florence):
    """One scene and a teacher-forced answer that reads location tokens."""
    from loradex.plugins.grounding.prompts import prompt_inputs

    image = scene(3, 3, 128)[0]
    pixels = florence.transform_at(128)(image).unsqueeze(0)
    encoded = prompt_inputs(florence.processor, ["<OD>"], torch.device("cpu"))
    answer = ids_of(florence, "</s>", "<loc_1>", "<loc_2>", "<OD>", "<loc_500>")
    return {**encoded, "pixel_values": pixels, "decoder_input_ids": torch.tensor([answer])}


def peft_logits(florence, folder):
    """Logits of the adapter in ``folder`` loaded by plain PEFT on a fresh copy of the base."""
    import copy

    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(florence.model), str(folder)).eval()
    with torch.no_grad():
        return model(**inputs(florence)).logits


def test_tokens_resolve_to_ids_and_bad_names_are_one_line(florence, tiny_backbone):
    loc = florence.token_indices(["<loc_*>"])
    assert len(loc) == 1000 and florence.token_indices(["<loc_7>", "<OD>"]) == tuple(sorted(ids_of(
        florence, "<loc_7>", "<OD>")))
    assert florence.token_indices(list(id_ranges(loc))) == loc  # the id:A-B form an import records
    with pytest.raises(BackboneError, match=r"^--tokens: '<lox_\*>' names no token of backbone 'tiny-florence2'"):
        florence.token_indices(["<lox_*>"])
    with pytest.raises(BackboneError, match=r"'id:5-99999' is outside the 1269 token ids"):
        florence.token_indices(["id:5-99999"])
    with pytest.raises(BackboneError, match="reads no text, so it has no token embeddings to train"):
        tiny_backbone.token_indices(["<loc_*>"])
    assert id_ranges([5, 1, 2, 3, 9]) == ("id:1-3", "id:5", "id:9")


def test_a_spec_without_tokens_reads_and_writes_as_before():
    spec = AdapterSpec.from_dict({"task": "classification", "backbone": {"name": "tiny-vit"},
                                  "lora": {"rank": 4, "targets": ["attn.q"]}, "head": {}})
    assert "tokens" not in spec.to_dict()["lora"] and "token_indices" not in spec.to_json()
    with_tokens = spec.replace(lora=LoraSettings(rank=4, targets="q", tokens="<loc_*>, <OD>", token_indices=[9, 3]))
    again = AdapterSpec.from_json(with_tokens.to_json())
    assert again.lora.tokens == ("<loc_*>", "<OD>") and again.lora.token_indices == (3, 9)
    with pytest.raises(SpecError, match="token_indices are set but tokens is empty"):
        LoraSettings(token_indices=[3])
    with pytest.raises(SpecError, match="token_indices must be a list of token ids"):
        LoraSettings(tokens="<OD>", token_indices=[-1])
    unresolved = spec.replace(lora=LoraSettings(targets="q", tokens="<OD>", target_modules="x"))
    with pytest.raises(SpecError, match="not resolved to token ids"):
        unresolved.to_lora_config()


def test_train_with_tokens_saves_the_rows_and_serves_them(tmp_path, florence):
    trained = run("train", "grounding", "--tokens", "<loc_*>,<OD>", "--data", "synthetic:train=8,val=2", *TINY,
                  "--project", tmp_path / "runs")
    assert trained.exit_code == 0, trained.output
    folder = tmp_path / "runs" / "grounding" / "train" / "adapter"
    spec = json.loads((folder / "loradex.json").read_text())
    assert spec["lora"]["tokens"] == ["<loc_*>", "<OD>"] and len(spec["lora"]["token_indices"]) == 1001
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == spec["lora"]["token_indices"]
    rows = load_file(folder / "adapter_model.safetensors")[DELTA]
    assert rows.shape == (1001, 128) and rows.abs().max() > 0  # trained: PEFT starts them at zero
    described = "token rows <loc_*>, <OD> (1,001 ids)"
    assert described in run("show", "grounding").stdout and described in (folder / "README.md").read_text()
    # served by loradex (the bank hands such adapters to PEFT) exactly as plain PEFT runs them
    import loradex

    model = loradex.load("grounding")
    with torch.no_grad():
        served = model.runner()(**inputs(florence)).logits
    assert torch.allclose(served, peft_logits(florence, folder), atol=1e-5)
    # the rows matter: without them the answer's location tokens score differently
    stripped = tmp_path / "no-rows"
    stripped.mkdir()
    save_file({k: v for k, v in load_file(folder / "adapter_model.safetensors").items() if k != DELTA},
              stripped / "adapter_model.safetensors")
    (stripped / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                             if k != "trainable_token_indices"}))
    assert not torch.allclose(served, peft_logits(florence, stripped), atol=1e-3)
    # --init continues the same rows; asking for other tokens is refused in one line
    again = run("train", "grounding", "--init", "grounding", "--tokens", "<OD>", "--data", "synthetic:train=8,val=2",
                *TINY, "--project", tmp_path / "runs")
    assert again.exit_code != 0 and "--tokens cannot change when training starts from" in again.stderr
    assert "tokens <loc_*>,<OD>" in again.stderr


def test_bad_token_names_stop_training_before_a_run_folder(tmp_path):
    result = run("train", "grounding", "--tokens", "<nope_*>", *TINY, "--project", tmp_path / "runs")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --tokens: '<nope_*>' names no token")
    on_vit = run("train", "classification", "--tokens", "<loc_*>", *TINY, "--project", tmp_path / "runs")
    assert on_vit.exit_code != 0 and "reads no text" in on_vit.stderr


def _store_pair(tmp_path, florence, home):
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    with Registry.open(home) as registry:
        for seed, name, tokens in ((1, "g1", "<loc_1>,<loc_2>"), (2, "g2", "<loc_2>,<OD>")):
            registry.put(random_adapter(tmp_path / name, "grounding", backbone=florence, targets="q,v", head=HEAD,
                                        seed=seed, scale=0.05, tokens=tokens), name=name)


def test_merge_sums_token_rows_over_the_union_and_export_merges_them(tmp_path, florence, isolated_home):
    _store_pair(tmp_path, florence, isolated_home)
    rows = {name: dict(zip(json.loads((tmp_path / name / "adapter_config.json").read_text())
                           ["trainable_token_indices"], load_file(tmp_path / name / "adapter_model.safetensors")[DELTA]))
            for name in ("g1", "g2")}
    merged = run("merge", "g1", "g2", "--name", "g12", "--json")
    assert merged.exit_code == 0, merged.output
    exported = run("export", "g12", tmp_path / "out")
    assert exported.exit_code == 0, exported.output
    folder = tmp_path / "out"
    loc1, loc2, od = ids_of(florence, "<loc_1>", "<loc_2>", "<OD>")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == sorted([loc1, loc2, od])
    got = dict(zip(config["trainable_token_indices"], load_file(folder / "adapter_model.safetensors")[DELTA]))
    # one task: weights 1/2 each; a token only one input trains gets half of its row
    assert torch.allclose(got[loc2], 0.5 * rows["g1"][loc2] + 0.5 * rows["g2"][loc2], atol=1e-6)
    assert torch.allclose(got[loc1], 0.5 * rows["g1"][loc1], atol=1e-6)
    assert torch.allclose(got[od], 0.5 * rows["g2"][od], atol=1e-6)
    # the docs say the rows are summed exactly whatever the method: a factor-wise method too
    assert run("merge", "g1", "g2", "--method", "linear", "--name", "g12lin").exit_code == 0
    assert run("export", "g12lin", tmp_path / "lin").exit_code == 0
    linear = load_file(tmp_path / "lin" / "adapter_model.safetensors")[DELTA]
    assert torch.allclose(linear, load_file(folder / "adapter_model.safetensors")[DELTA], atol=1e-6)
    spec = json.loads((folder / "loradex.json").read_text())
    assert spec["lora"]["tokens"] == ["<loc_1>", "<loc_2>", "<OD>"] and spec["lora"]["token_indices"] == sorted(
        [loc1, loc2, od])
    # export --merged folds rows and LoRA into the base (tied output rows once): same logits as PEFT
    assert run("export", "g12", tmp_path / "merged", "--merged").exit_code == 0
    from transformers import Florence2ForConditionalGeneration

    standalone = Florence2ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(standalone(**inputs(florence)).logits, peft_logits(florence, folder), atol=1e-4)


def test_compress_keeps_token_rows(tmp_path, florence, isolated_home):
    _store_pair(tmp_path, florence, isolated_home)
    before = load_file(tmp_path / "g1" / "adapter_model.safetensors")[DELTA]
    for args, check in ((["--rank", "2"], lambda rows: torch.equal(rows, before)),
                        (["--dtype", "bf16"], lambda rows: rows.dtype == torch.bfloat16 and torch.allclose(
                            rows.float(), before, atol=1e-2))):
        result = run("compress", "g1", *args, "--name", f"c{args[-1]}")
        assert result.exit_code == 0, result.output
        assert run("export", f"c{args[-1]}", tmp_path / args[-1]).exit_code == 0
        folder = tmp_path / args[-1]
        assert check(load_file(folder / "adapter_model.safetensors")[DELTA])
        assert json.loads((folder / "loradex.json").read_text())["lora"]["tokens"] == ["<loc_1>", "<loc_2>"]


def test_import_checks_token_rows_against_the_config(tmp_path, florence, isolated_home):
    from loradex.testing import random_adapter

    folder = random_adapter(tmp_path / "plain", "grounding", backbone=florence, targets="q,v", head=HEAD,
                            tokens="<loc_1>,<loc_2>")
    (folder / "loradex.json").unlink()  # a plain PEFT folder
    imported = run("import", folder, "--task", "grounding", "--name", "peft-tokens", "--base", "tiny-florence2")
    assert imported.exit_code == 0, imported.output
    shown = run("export", "peft-tokens", tmp_path / "back")
    assert shown.exit_code == 0, shown.output
    lora = json.loads((tmp_path / "back" / "loradex.json").read_text())["lora"]
    loc1, loc2 = ids_of(florence, "<loc_1>", "<loc_2>")
    assert lora["tokens"] == [f"id:{loc1}-{loc2}"] and lora["token_indices"] == [loc1, loc2]
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "trainable_token_indices": [loc1, loc2, 7]}))
    refused = run("import", folder, "--task", "grounding", "--name", "bad", "--base", "tiny-florence2")
    assert refused.exit_code != 0
    assert "has shape [2, 128], but trainable_token_indices lists 3 tokens" in refused.stderr.strip().splitlines()[-1]
    (folder / "adapter_config.json").write_text(json.dumps({**config, "trainable_token_indices": ["<loc_1>"]}))
    refused = run("import", folder, "--task", "grounding", "--name", "bad", "--base", "tiny-florence2")
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "trainable_token_indices must list token ids (non-negative integers), got ['<loc_1>']" in refused.stderr
