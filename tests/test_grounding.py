"""Grounding on a Florence-2 base: answers as text with <loc_N> boxes, JSONL in the reference format, folders."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from PIL import Image

from loradex.core.errors import DataError
from loradex.plugins.grounding.data import PHRASE, read_jsonl, scene, scene_records
from loradex.plugins.grounding.locations import SuffixError, dequantize, parse_objects, quantize
from loradex.registry.cli import cli

TINY = ["--epochs", "1", "--batch-size", "8", "--no-progress"]


def run(*args, home=None):
    prefix = ["--home", str(home)] if home else []
    return CliRunner().invoke(cli, [*prefix, *map(str, args)])


def test_boxes_round_trip_through_location_bins():
    bins = quantize((10, 20, 90, 60), 100, 80)
    assert bins == [100, 250, 900, 750]
    assert dequantize(bins, 100, 80) == [10.1, 20.0, 90.0, 60.0]
    assert parse_objects("drop<loc_732><loc_481><loc_748><loc_501>broken<loc_1><loc_2><loc_3><loc_4>") == [
        ("drop", [732, 481, 748, 501]), ("broken", [1, 2, 3, 4])]


@pytest.mark.parametrize(("suffix", "message"), [
    ("drop<loc_732><loc_1481><loc_748><loc_501>", "<loc_1481> is outside 0..999"),
    ("drop<loc_732><loc_481><loc_748>", "fewer than four <loc_N>"),
    ("drop<loc_1><loc_2><loc_3><loc_4> and more", "after the last box"),
    ("just words", "after the last box"),
    ("square<loc_500><loc_500><loc_100><loc_100>", "has x0 > x1"),  # issue 22.4
    ("square<loc_100><loc_500><loc_200><loc_100>", "has y0 > y1"),
])
def test_malformed_answers_are_refused(suffix, message):
    with pytest.raises(SuffixError, match=message):
        parse_objects(suffix)


def test_generated_text_is_parsed_leniently():
    assert parse_objects("a<loc_1><loc_2><loc_3><loc_4>b<loc_5>", strict=False) == [("a", [1, 2, 3, 4])]
    assert parse_objects("a<loc_9><loc_2><loc_3><loc_4>b<loc_1><loc_2><loc_3><loc_4>", strict=False) == [
        ("b", [1, 2, 3, 4])]  # an inverted generated box is skipped, not drawn


def test_synthetic_scenes_hold_three_kinds_of_records():
    image, objects = scene(0, 3, 128)
    records = scene_records(image, objects, where="scene 3")
    assert [r.kind for r in records][:2] == ["od", "region"]
    od, region = records[0], records[1]
    assert len(od.boxes) == len(objects) and od.labels == [o[0] for o in sorted(
        objects, key=lambda o: (quantize(o[2], 128, 128)[1], quantize(o[2], 128, 128)[0]))]
    assert all(label.split()[1] in ("circle", "square", "triangle") for label in region.labels)
    phrases = [r for r in records if r.kind == "phrase"]
    assert not phrases or phrases[0].prefix.startswith(PHRASE)


def write_reference_jsonl(folder, records, *, images=("0 (1).jpg", "0 (2).jpg")):
    """A folder in exactly the fabric-defect reference's format: images beside annotations.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (640, 480), (120, 110, 100)).save(folder / name)
    (folder / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


REFERENCE = [
    {"prefix": "<OD>", "suffix": "drop<loc_732><loc_481><loc_748><loc_501>", "image": "0 (1).jpg"},
    {"prefix": "<OD>", "suffix": "wrinkle<loc_100><loc_200><loc_400><loc_300>broken<loc_500><loc_500><loc_600><loc_700>",
     "image": "0 (2).jpg"},
    {"prefix": "<DENSE_REGION_CAPTION>", "suffix": "a small drop<loc_732><loc_481><loc_748><loc_501>",
     "image": "0 (1).jpg"},
    {"prefix": "<CAPTION_TO_PHRASE_GROUNDING>the wrinkle", "suffix": "the wrinkle<loc_100><loc_200><loc_400><loc_300>",
     "image": "0 (2).jpg"},
]


def test_reference_format_jsonl_trains_and_evaluates(tmp_path):
    data = tmp_path / "dataset"
    write_reference_jsonl(data / "train", REFERENCE)
    write_reference_jsonl(data / "valid", REFERENCE)
    trained = run("train", "grounding", "--data", data, *TINY, "--project", tmp_path / "runs", "--json")
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.stdout)
    assert {"map50", "grounding_acc50", "caption_bleu2"} <= set(result["metrics"])
    with_labels = json.loads(run("show", "grounding", "--json").stdout)["spec"]["head"]
    assert with_labels["labels"] == ["broken", "drop", "wrinkle"]
    assert with_labels["kinds"] == ["od", "region", "phrase"]
    evaluated = run("eval", "grounding", "--data", data, "--split", "val", "--json", "--project", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    assert "map50" in json.loads(evaluated.stdout)["metrics"]
    run_dir = tmp_path / "runs" / "grounding" / "train"
    assert (run_dir / "predictions" / "val_0.png").is_file() and (run_dir / "predictions" / "val_0.txt").is_file()


def test_a_bad_location_is_refused_with_file_and_line(tmp_path):
    bad = [*REFERENCE[:2], {"prefix": "<OD>", "suffix": "drop<loc_732><loc_481><loc_1748><loc_501>",
                            "image": "0 (1).jpg"}]
    folder = write_reference_jsonl(tmp_path / "d", bad)
    with pytest.raises(DataError, match=r"annotations\.jsonl:3: suffix .*<loc_1748> is outside 0\.\.999"):
        read_jsonl(folder / "annotations.jsonl", root=folder)
    result = run("train", "grounding", "--data", folder / "annotations.jsonl", *TINY, "--project", tmp_path / "runs")
    assert result.exit_code != 0 and "annotations.jsonl:3" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("record", "message"), [
    ({"prefix": "<OD>", "suffix": "drop<loc_1><loc_2><loc_3><loc_4>", "image": "missing.jpg"}, "does not exist"),
    ({"prefix": "<SEGMENT>", "suffix": "drop<loc_1><loc_2><loc_3><loc_4>", "image": "0 (1).jpg"}, "is not one of"),
    ({"prefix": "<CAPTION_TO_PHRASE_GROUNDING>", "suffix": "x<loc_1><loc_2><loc_3><loc_4>", "image": "0 (1).jpg"},
     "needs the phrase"),
    ({"prefix": "<OD>", "image": "0 (1).jpg"}, "needs the strings 'prefix', 'suffix' and 'image'"),
    ({"prefix": "<OD>", "suffix": "drop<loc_1><loc_2><loc_3><loc_4>", "image": "../escape.jpg"}, "leads outside"),
])
def test_bad_records_name_file_and_line(tmp_path, record, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "escape.jpg")
    folder = write_reference_jsonl(tmp_path / "d", [REFERENCE[0], record])
    with pytest.raises(DataError, match=rf"annotations\.jsonl:2: .*{message}"):
        read_jsonl(folder / "annotations.jsonl", root=folder)


def test_a_florence2_folder_saved_by_transformers_loads_trains_and_predicts(tmp_path):
    from loradex.plugins.backbones.florence import FLORENCE_PRESETS

    model, processor = FLORENCE_PRESETS[0].build()
    folder = tmp_path / "my-florence2"
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    from loradex.core import plugins

    # a saved Florence-2 has learned weights (pretrained defaults apply); the preset's are drawn from a seed
    assert plugins.resolve_backbone(str(folder)).load(str(folder)).pretrained
    assert not FLORENCE_PRESETS[0].load().pretrained
    trained = run("train", "grounding", "--backbone", folder, "--data", "synthetic:train=6,val=3", *TINY,
                  "--project", tmp_path / "runs")
    assert trained.exit_code == 0, trained.output
    image = tmp_path / "scene.png"
    scene(1, 1, 128)[0].save(image)
    predicted = run("predict", "grounding", image, "-o", f"prompt={PHRASE}", "-o", "text=the red circle", "--json")
    assert predicted.exit_code == 0, predicted.output
    (record,) = json.loads(predicted.stdout)
    answer = record["predictions"]["grounding@v1"]
    assert answer["task"] == "grounding" and answer["prompt"] == f"{PHRASE}the red circle"
    assert isinstance(answer["text"], str) and isinstance(answer["detections"], list)
    assert record["base"]["name"] == str(folder)
    # issue 22.13: a phrase too long for the encoder is refused when the options are parsed, before any pass
    # (a server parses them per request, so one request's text cannot fail a batch shared with others)
    too_long = run("predict", "grounding", image, "-o", "text=" + "the red circle " * 40)
    assert too_long.exit_code != 0 and "Traceback" not in too_long.output
    assert re.search(r"^Error: option text: prompt '<CAPTION_TO_PHRASE_GROUNDING>the red circle.* the model takes 512",
                     too_long.stderr.strip().splitlines()[-1]), too_long.stderr


def test_a_florence2_adapter_and_a_vit_adapter_are_refused_together(tmp_path, isolated_home):
    from loradex.core import plugins
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    with Registry.open(isolated_home) as registry:
        vit = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
        florence = plugins.resolve_backbone("tiny-florence2").load("tiny-florence2")
        registry.put(random_adapter(tmp_path / "c", "classification", backbone=vit), name="cls")
        registry.put(random_adapter(tmp_path / "g", "grounding", backbone=florence, targets="q,v,vision.attn",
                                    head={"labels": ["circle"], "kinds": ["od"]}), name="ground")
    image = tmp_path / "x.png"
    scene(2, 2, 128)[0].save(image)
    result = run("predict", "cls,ground", image)
    assert result.exit_code != 0 and "must share one base" in result.stderr
    alone = run("predict", "ground", image, "--json")
    assert alone.exit_code == 0, alone.output
    refused = run("train", "grounding", "--backbone", "tiny-vit", *TINY)
    assert refused.exit_code != 0 and "needs an encoder-decoder base" in refused.stderr


def test_grounding_adapters_merge_push_style_round_trip(tmp_path, isolated_home):
    """Two grounding adapters merge like any others (the LoRA alone: no head weights)."""
    from loradex.core import plugins
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    florence = plugins.resolve_backbone("tiny-florence2").load("tiny-florence2")
    head = {"labels": ["circle", "square", "triangle"], "kinds": ["od", "region", "phrase"]}
    with Registry.open(isolated_home) as registry:
        for seed, name in ((1, "g1"), (2, "g2")):
            registry.put(random_adapter(tmp_path / name, "grounding", backbone=florence, targets="q,v,vision.attn",
                                        head=head, seed=seed, scale=0.02),
                         name=name, args={"data": "synthetic:train=2,val=4"})
    merged = run("merge", "g1", "g2", "--name", "g12", "--json")
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout)["tasks"] == ["grounding"]
    exported = run("export", "g12", tmp_path / "merged", "--merged")
    assert exported.exit_code == 0, exported.output
    from transformers import Florence2ForConditionalGeneration

    assert Florence2ForConditionalGeneration.from_pretrained(tmp_path / "merged") is not None


def test_mix_orders_the_kinds_of_records():
    from loradex.plugins.grounding.data import MixSampler

    kinds = ["phrase", "od", "region", "od", "phrase", "region", "od"]
    sequential = list(MixSampler(kinds, mix="sequential", seed=0))
    assert [kinds[i] for i in sequential] == ["od"] * 3 + ["region"] * 2 + ["phrase"] * 2
    assert sorted(sequential) == list(range(len(kinds)))
    interleaved = MixSampler(kinds, mix="interleave", seed=0)
    first, second = list(interleaved), list(interleaved)
    assert sorted(first) == list(range(len(kinds))) and first != second  # reshuffled every epoch
    assert [kinds[i] for i in first] != [kinds[i] for i in sequential]


def test_a_phrase_implies_phrase_grounding():
    from loradex.core.errors import ConfigError
    from loradex.plugins.grounding.data import REGION
    from loradex.plugins.grounding.task import GroundingTask

    task = GroundingTask()
    assert task.parse_options({"text": "the red circle"})["prompt"] == PHRASE
    assert task.parse_options({})["prompt"] == "<OD>"
    with pytest.raises(ConfigError, match="takes none"):
        task.parse_options({"prompt": REGION, "text": "the red circle"})


def test_texts_longer_than_the_model_takes_are_one_line_naming_them():
    """Issue 22.13: a 250-object answer (IndexError inside BART mid-run) and a 330-character phrase."""
    import torch

    from loradex.core import plugins
    from loradex.core.errors import DataError
    from loradex.plugins.grounding.prompts import label_ids, max_positions, prompt_inputs

    florence = plugins.resolve_backbone("tiny-florence2").load("tiny-florence2")
    limit = max_positions(florence.model)
    assert limit == 512
    processor = florence.processor
    answer = "".join(f"thing<loc_{i}><loc_{i}><loc_{i + 1}><loc_{i + 1}>" for i in range(250))
    with pytest.raises(DataError, match=r"answer 'thing<loc_0>.* tokens, more than the 512 the model's decoder takes"):
        label_ids(processor, ["a<loc_1><loc_2><loc_3><loc_4>", answer], torch.device("cpu"), limit=limit)
    assert label_ids(processor, ["a<loc_1><loc_2><loc_3><loc_4>"], torch.device("cpu"), limit=limit).shape[1] < 20
    phrase = "<CAPTION_TO_PHRASE_GROUNDING>" + "the red circle " * 40
    with pytest.raises(DataError, match=r"prompt '<CAPTION_TO_PHRASE_GROUNDING>the red circle.* the model takes 512"):
        prompt_inputs(processor, [phrase], torch.device("cpu"), limit=limit)


def test_a_record_too_long_for_the_model_is_refused_when_the_data_is_read(tmp_path):
    """Issue 22.13: a 250-object <OD> answer failed inside BART mid-run; now the data is refused
    before training starts, naming the file and line, and no run folder is made."""
    many = "".join(f"thing<loc_{i}><loc_{i}><loc_{i + 1}><loc_{i + 1}>" for i in range(250))
    long_phrase = "<CAPTION_TO_PHRASE_GROUNDING>" + "the red circle " * 40
    for line, record, message in (
            (3, {"prefix": "<OD>", "suffix": many, "image": "0 (1).jpg"},
             r"answer 'thing<loc_0>.* tokens, more than the 512 the model's decoder takes"),
            (3, {"prefix": long_phrase, "suffix": "the red circle<loc_1><loc_2><loc_3><loc_4>", "image": "0 (1).jpg"},
             r"prompt '<CAPTION_TO_PHRASE_GROUNDING>the red circle.* the model takes 512")):
        folder = write_reference_jsonl(tmp_path / f"d{len(message)}", [*REFERENCE[:2], record])
        result = run("train", "grounding", "--data", folder / "annotations.jsonl", *TINY,
                     "--project", tmp_path / "runs")
        assert result.exit_code != 0
        last = result.stderr.strip().splitlines()[-1]
        assert re.search(rf"annotations\.jsonl:{line}: {message}", last), result.stderr
        assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
