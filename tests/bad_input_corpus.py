"""A corpus of bad input: names, data, configs, artifacts and index damage, as a careless user or a
hostile file would give them. Each case builds what it needs in a scratch folder and names the
`adapters` command to run and the text its one error line must contain.

``tests/test_bad_input_corpus.py`` runs every case against a registry holding one adapter
(``shapes``): one line on stderr, exit != 0, no traceback, no run folder left behind, and the
registry unchanged (same versions, `verify` clean).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class Case:
    """One bad input: ``make(scratch)`` writes its files and returns the CLI arguments."""

    id: str
    make: Callable[[Path], list[str]]
    message: str
    damages_index: bool = False
    """The case damages the index on purpose; only 'nothing lost' is checked afterwards."""


def _image(path: Path, size=(32, 32), colour=(90, 90, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _coco(root: Path, change: Callable[[dict], None] | None = None, *, keypoints: bool = False) -> Path:
    """A small valid COCO file (detection, or keypoints) with its images, then ``change`` applied."""
    _image(root / "a.png", (100, 80))
    _image(root / "b.png", (100, 80))
    category = {"id": 1, "name": "thing"}
    annotation = {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 40], "iscrowd": 0}
    if keypoints:
        category.update(keypoints=["head", "tail"], skeleton=[[1, 2]])
        annotation["keypoints"] = [20, 20, 2, 30, 40, 2]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                       {"id": 2, "file_name": "b.png", "width": 100, "height": 80}],
            "categories": [category],
            "annotations": [annotation, {**annotation, "id": 11, "image_id": 2}]}
    if change:
        change(data)
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _yolo(root: Path, label_bytes: bytes) -> Path:
    _image(root / "images" / "a.png")
    _image(root / "images" / "b.png")
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "a.txt").write_bytes(label_bytes)
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("thing\n")
    return root


def _classes(root: Path) -> Path:
    for name in ("cat", "dog"):
        for i in range(3):
            _image(root / name / f"{i}.png", colour=(40 * i, 0, 0))
    return root


def _peft(root: Path, *, rank: int = 4, config_rank: int | None = None, module: str = "layers.0.attention.q_proj",
          target_modules=("q_proj",), with_spec: dict | None = None, head: dict | None = None) -> Path:
    """A plain PEFT folder for tiny-vit (width 192)."""
    import numpy as np
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": "tiny-vit", "r": config_rank or rank, "lora_alpha": 8,
              "target_modules": list(target_modules), "bias": "none"}
    (root / "adapter_config.json").write_text(json.dumps(config))
    save_file({f"base_model.model.{module}.lora_A.weight": np.zeros((rank, 192), np.float32),
               f"base_model.model.{module}.lora_B.weight": np.zeros((192, rank), np.float32)},
              str(root / "adapter_model.safetensors"))
    if head is not None:
        save_file({k: np.zeros(v, np.float32) for k, v in head.items()}, str(root / "head.safetensors"))
    if with_spec is not None:
        (root / "loradex.json").write_text(json.dumps(with_spec))
    return root


def _spec(labels: list[str]) -> dict:
    from loradex.core.spec import AdapterSpec, BackboneRef, LoraSettings

    return AdapterSpec(task="classification", backbone=BackboneRef(name="tiny-vit"),
                       lora=LoraSettings(rank=4, alpha=8, targets=("attn.q",),
                                         target_modules=r"^layers\.\d+\.(attention\.q_proj)$"),
                       head={"labels": labels, "pooling": "max"}, image_size=64).to_dict()


def _config(root: Path, text: str) -> list[str]:
    path = root / "train.yaml"
    path.write_text(text)
    return ["train", "classification", "--config", str(path)]


TRAIN = ["train", "classification", "--no-progress"]

def _grounding_jsonl(suffix: str) -> Callable[[Path], list[str]]:
    """A grounding JSONL whose second record answers ``suffix``, and the train command reading it."""
    def make(scratch: Path) -> list[str]:
        _image(scratch / "a.png", (64, 48))
        records = [{"prefix": "<OD>", "suffix": "dot<loc_1><loc_2><loc_300><loc_400>", "image": "a.png"},
                   {"prefix": "<OD>", "suffix": suffix, "image": "a.png"}]
        (scratch / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
        return ["train", "grounding", "--data", str(scratch / "data.jsonl"), "--no-progress"]
    return make



def _bomb(s: Path) -> list[str]:
    _png_header(_classes(s / "d") / "cat" / "huge.png", 15000, 15000)
    return [*TRAIN, "--data", str(s / "d")]


def _not_an_image_in_data(s: Path) -> list[str]:
    (_classes(s / "d") / "dog" / "x.png").write_bytes(b"not a png")
    return [*TRAIN, "--data", str(s / "d")]


def _escaping_coco(s: Path) -> list[str]:
    _image(s / "outside.png")
    return ["train", "detection", "--data", str(_coco(s / "c", lambda d: d["images"][0].update(
        file_name="../outside.png")))]


def _not_an_image_to_predict(s: Path) -> list[str]:
    (s / "x.txt").write_text("hi")
    return ["predict", "shapes", str(s / "x.txt")]


def _symlinked_readme(s: Path) -> list[str]:
    folder = _peft(s / "p")
    (folder / "README.md").symlink_to("/etc/passwd")
    return ["import", str(folder), "--task", "classification"]


def _pickle_beside(s: Path) -> list[str]:
    folder = _peft(s / "p")
    (folder / "model.bin").write_bytes(b"\x80\x04")
    return ["import", str(folder), "--task", "classification"]


def _non_finite_lora(value: float) -> Callable[[Path], list[str]]:
    def make(s: Path) -> list[str]:
        import numpy as np
        from safetensors.numpy import load_file, save_file

        folder = _peft(s / "p")
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        name = sorted(tensors)[0]
        tensors[name] = np.where(np.arange(tensors[name].size).reshape(tensors[name].shape) == 5, value,
                                 tensors[name]).astype(np.float32)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        return ["import", str(folder), "--task", "classification"]

    return make


def _nested_spec(s: Path) -> list[str]:
    folder = _peft(s / "p")
    (folder / "loradex.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["import", str(folder), "--task", "classification"]


def _nested_coco(s: Path) -> list[str]:
    root = _coco(s / "c")
    root.write_text("[" * 100_000 + "]" * 100_000)
    return ["train", "detection", "--data", str(root)]


def _bad_config_json(s: Path) -> list[str]:
    folder = _peft(s / "p")
    (folder / "adapter_config.json").write_text("{nope")
    return ["import", str(folder), "--task", "classification"]


def _train(*args: str) -> Callable[[Path], list[str]]:
    return lambda scratch: [*TRAIN, *args]


CASES: list[Case] = [
    # --- names and references
    Case("name-uppercase", lambda s: ["show", "Shapes"], "names are lowercase"),
    Case("name-escape", lambda s: ["rm", "../etc"], "may not contain '/', '\\' or '..'"),
    Case("ref-empty-selector", lambda s: ["show", "shapes@"], "has nothing after '@'"),
    Case("ref-huge-version", lambda s: ["show", "shapes@v99999999999999999999"], "is out of range"),
    Case("ref-unknown", lambda s: ["show", "shapse"], "Did you mean 'shapes'?"),
    Case("ref-missing-version", lambda s: ["predict", "shapes@v7", str(_image(s / "x.png"))], "has no version v7"),
    Case("alias-latest", lambda s: ["tag", "shapes@v1", "latest"], "is kept by the registry"),
    Case("alias-like-version", lambda s: ["tag", "shapes@v1", "v3"], "looks like a version number"),
    Case("train-bad-name", _train("--name", "My Adapter"), "is not allowed"),
    Case("run-name-escape", _train("--run-name", "../../x"), "must be a plain folder name"),
    Case("unknown-task", lambda s: ["train", "clasification"], "Did you mean 'classification'?"),
    Case("unknown-backbone", _train("--backbone", "tiny-vti"), "Did you mean 'tiny-vit'?"),
    # --- data
    Case("data-missing", _train("--data", "no/such/folder"), "does not exist"),
    Case("data-is-a-file", lambda s: [*TRAIN, "--data", str(_image(s / "one.png"))], "found a file"),
    Case("data-one-class", lambda s: [*TRAIN, "--data", str(_image(s / "d" / "cat" / "a.png").parent.parent)],
         "need at least 2 class folders"),
    Case("data-bomb", _bomb, "DecompressionBombError"),
    Case("data-not-an-image", _not_an_image_in_data, "x.png: unreadable image"),
    Case("synthetic-option", _train("--data", "synthetic:trian=5"), "is not one of train=N"),
    Case("synthetic-range", _train("--data", "synthetic:train=-5"), "train=-5 is out of range"),
    Case("coco-annotations-object", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d.update(annotations={})))], "'annotations' must be a list, found dict"),
    Case("coco-annotation-string", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["annotations"].append("oops")))], "annotations[2] must be a JSON object"),
    Case("coco-images-not-list", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d.update(images={"id": 1})))], "'images' must be a list"),
    Case("coco-bbox-nan", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 2, 3])))], "not a finite number"),
    Case("coco-bbox-outside", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["annotations"][0].update(bbox=[90, 10, 30, 40])))], "lies outside the 100x80 image"),
    Case("coco-file-escapes", _escaping_coco, "leads outside the data folder"),
    Case("coco-file-absolute", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["images"][0].update(file_name="/etc/hostname")))], "must be a path relative"),
    Case("coco-category", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["annotations"][0].update(category_id=7)))], "category id 7 is not declared"),
    Case("coco-image-id", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["annotations"][0].update(image_id=99)))], "refers to image id 99"),
    Case("coco-width-type", lambda s: ["train", "detection", "--data", str(_coco(
        s / "c", lambda d: d["images"][0].update(width="wide")))], "'width' must be a positive number"),
    Case("pose-keypoint-nan", lambda s: ["train", "pose", "--data", str(_coco(
        s / "k", lambda d: d["annotations"][0].update(keypoints=[20, float("nan"), 2, 30, 40, 2]), keypoints=True))],
        "not a finite number"),
    Case("pose-keypoint-count", lambda s: ["train", "pose", "--data", str(_coco(
        s / "k", lambda d: d["annotations"][0].update(keypoints=[20, 20, 2]), keypoints=True))], "must hold 3 x 2"),
    Case("yolo-nan", lambda s: ["train", "detection", "--data", str(_yolo(s / "y", b"0 nan 0.5 0.1 0.1\n"))],
         "not a finite number"),
    Case("yolo-not-utf8", lambda s: ["train", "detection", "--data", str(_yolo(s / "y", b"0 0.5 \xff\xfe 0.1\n"))],
         "not UTF-8 text"),
    Case("yolo-class", lambda s: ["train", "detection", "--data", str(_yolo(s / "y", b"3 0.5 0.5 0.1 0.1\n"))],
         "class id 3 is not declared"),
    Case("yolo-line", lambda s: ["train", "detection", "--data", str(_yolo(s / "y", b"0 0.5 0.5\n"))],
         "expected 'class cx cy w h'"),
    # --- options and configs
    Case("config-missing", lambda s: [*TRAIN, "--config", str(s / "none.yaml")], "cannot read config file"),
    Case("config-not-yaml", lambda s: _config(s, "epochs: [1,\n"), "not valid YAML"),
    Case("config-list", lambda s: _config(s, "- 1\n- 2\n"), "expected a mapping"),
    Case("config-unknown-key", lambda s: _config(s, "epocs: 3\n"), "Did you mean 'epochs'?"),
    Case("config-data-number", lambda s: _config(s, "data: 5\n"), "key 'data' must be text"),
    Case("config-project-list", lambda s: _config(s, "project: [1, 2]\n"), "key 'project' must be text"),
    Case("config-epochs-text", lambda s: _config(s, "epochs: ten\n"), "epochs must be a positive integer"),
    Case("config-targets-number", lambda s: _config(s, "targets: 5\n"), "LoRA targets must be"),
    Case("scheduler", _train("--scheduler", "cosin"), "Did you mean 'cosine'?"),
    Case("weight-decay", _train("--weight-decay", "-1"), "weight_decay must be a number >= 0"),
    Case("seed", _train("--seed", "-3"), "seed must be an integer"),
    Case("lr", _train("--lr", "0"), "lr must be a positive number"),
    Case("targets", _train("--targets", "qq"), "unknown LoRA target 'qq'"),
    Case("rank", _train("--rank", "0"), "rank must be a positive integer"),
    Case("fp16-on-cpu", _train("--mixed-precision", "fp16", "--data", "synthetic:train=5,val=5"),
         "needs a CUDA GPU"),
    Case("project-under-file", lambda s: [*TRAIN, "--project", str(_image(s / "f.png") / "runs")], "is a file"),
    Case("predict-option", lambda s: ["predict", "shapes", str(_image(s / "x.png")), "-o", "topk=2"],
         "Did you mean 'top_k'?"),
    Case("predict-not-image", _not_an_image_to_predict, "x.txt: not a readable image"),
    Case("predict-empty-folder", lambda s: ["predict", "shapes", str(s)], "folder has no images"),
    Case("eval-other-labels", lambda s: ["eval", "shapes", "--data", str(_classes(s / "d"))], "differ from the labels"),
    # --- artifacts
    Case("import-symlink", _symlinked_readme, "is a symbolic link"),
    Case("import-pickle", _pickle_beside, "never unpickles"),
    Case("import-rank", lambda s: ["import", str(_peft(s / "p", rank=4, config_rank=16)), "--task", "classification"],
         "has rank-4 LoRA weights, but adapter_config.json says r=16"),
    Case("import-missing-layer", lambda s: ["import", str(_peft(s / "p", module="layers.9.attention.q_proj")),
                                            "--task", "classification"], "does not have"),
    Case("import-targets", lambda s: ["import", str(_peft(s / "p", target_modules=("v_proj",))),
                                      "--task", "classification"], "match none of the LoRA's modules"),
    Case("import-head-labels", lambda s: ["import", str(_peft(
        s / "p", with_spec=_spec(["a", "b", "c"]), head={"norm.weight": (192,), "norm.bias": (192,),
                                                          "classifier.weight": (2, 192), "classifier.bias": (2,)})),
        "--task", "classification"], "do its labels match the weights?"),
    Case("import-task", lambda s: ["import", str(_peft(s / "p")), "--task", "clasification"],
         "Did you mean 'classification'?"),
    Case("import-config-json", _bad_config_json, "not valid JSON"),
    Case("import-nan", _non_finite_lora(float("nan")), "holds 1 NaN or infinite value"),
    Case("import-nested-spec", _nested_spec, "loradex.json: not valid JSON"),  # issue 22.7
    Case("coco-nested", _nested_coco, "not a readable COCO JSON file (RecursionError"),  # issue 22.14
    Case("import-inf", _non_finite_lora(float("-inf")), "holds 1 NaN or infinite value"),
    Case("grounding-inverted-box", _grounding_jsonl("square<loc_500><loc_500><loc_100><loc_100>"),
         "data.jsonl:2: suffix"),  # issue 22.4
    Case("grounding-answer-too-long", _grounding_jsonl("".join(f"thing<loc_{i}><loc_{i}><loc_{i + 1}><loc_{i + 1}>"
                                                               for i in range(250))),
         "data.jsonl:2: answer 'thing<loc_0>"),  # issue 22.13: refused when read, not mid-run
    Case("export-under-file", lambda s: ["export", "shapes", str(_image(s / "f.png") / "out")], "is a file"),
    Case("export-not-empty", lambda s: ["export", "shapes", str(_image(s / "full" / "x.png").parent)],
         "is not an empty folder"),
    # /proc refuses new entries even to root (chmod does not stop root): non-writable destinations, issue 22.12
    Case("predict-save-unwritable", lambda s: ["predict", "shapes", str(_image(s / "x.png")), "--save",
                                               "/proc/loradex-drawings"], "cannot write drawings there"),
    Case("export-unwritable", lambda s: ["export", "shapes", "/proc/loradex-export"], "cannot be written"),
    Case("export-merged-unwritable", lambda s: ["export", "shapes", "/proc/loradex-export", "--merged"],
         "cannot be written"),
    Case("merge-one", lambda s: ["merge", "shapes", "--name", "m"], "at least two adapters"),
    Case("compress-rank", lambda s: ["compress", "shapes", "--rank", "64"], "is above the adapter's rank"),
    # --- index damage
    Case("index-random-bytes", lambda s: ["list"], "run `adapters verify --repair`", damages_index=True),
]
