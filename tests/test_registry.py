"""The registry's Python API: versions, aliases, lineage, integrity, bad input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from loradex.core.errors import (
    ArtifactError,
    FingerprintMismatchError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    RegistryError,
)
from loradex.registry.store.registry import Registry, default_home

try:
    from tests.registry_helpers import make_adapter, peft_config, tree_snapshot, write_peft_folder
except ImportError:  # tests/ run as plain folder
    from registry_helpers import make_adapter, peft_config, tree_snapshot, write_peft_folder  # type: ignore[no-redef]


@pytest.fixture
def reg(tmp_path):
    with Registry.open(tmp_path / "reg") as registry:
        yield registry


@pytest.fixture
def folder(tmp_path):
    return make_adapter(tmp_path / "adapter", seed=1)


def blob_count(reg: Registry) -> int:
    return sum(1 for _ in reg.blobs.all())


# -- home ----------------------------------------------------------------------------------


def test_default_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("LORADEX_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "loradex"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_home() == Path("~/.cache/loradex").expanduser()


def test_open_none_uses_loradex_home(isolated_home):
    with Registry.open() as reg:
        assert reg.root == isolated_home
        assert (isolated_home / "index.db").is_file()
        mode = reg.index.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


# -- versions, references, aliases ---------------------------------------------------------


def test_put_numbers_versions_and_resolves_every_ref_form(reg, tmp_path):
    recs = [reg.put(make_adapter(tmp_path / f"a{i}", seed=i), name="pose") for i in range(3)]
    assert [r.ref for r in recs] == ["pose@v1", "pose@v2", "pose@v3"]
    assert reg.resolve("pose").version == 3
    assert reg.resolve("pose@latest").version == 3
    assert reg.resolve("pose@v2").version == 2
    assert reg.resolve("pose@2").version == 2
    assert reg.get("pose@v1") == recs[0]
    rec = recs[0]
    assert rec.task == "classification" and rec.kind == "trained"
    assert rec.spec.backbone.name == "tiny-vit"
    assert set(rec.files) == {"adapter_config.json", "adapter_model.safetensors", "head.safetensors",
                              "loradex.json", "metrics.json", "README.md"}
    assert rec.size == sum(e.size for e in rec.files.values())
    assert rec.created.endswith("Z")
    assert rec.metrics == {"f1_macro": 0.5, "accuracy": 0.6}
    assert (rec.headline_metric, rec.headline_value) == ("f1_macro", 0.5)
    sha, size = rec.files["loradex.json"]  # a FileEntry is a (sha256, size) pair
    assert len(sha) == 64 and size > 0


def test_identical_files_are_stored_once(reg, folder):
    reg.put(folder, name="a")
    n = blob_count(reg)
    reg.put(folder, name="a")
    reg.put(folder, name="b")
    assert blob_count(reg) == n
    assert reg.resolve("a@v1").files == reg.resolve("b@v1").files


def test_metrics_argument_and_primary_metric(reg, folder):
    rec = reg.put(folder, name="a", metrics={"map50": 0.7, "acc": 1}, args={"primary_metric": "acc"})
    assert rec.metrics == {"map50": 0.7, "acc": 1.0}
    assert (rec.headline_metric, rec.headline_value) == ("acc", 1.0)
    materialized = reg.materialize(rec)
    assert json.loads((materialized / "metrics.json").read_text()) == {"acc": 1.0, "map50": 0.7}
    with pytest.raises(RegistryError, match="not a number"):
        reg.put(folder, name="a", metrics={"x": "high"})
    assert reg.put(folder, name="a", metrics={"f1_macro": float("nan"), "acc": 0.5}).metrics == {"acc": 0.5}


def test_versions_are_never_renumbered(reg, tmp_path):
    for i in range(3):
        reg.put(make_adapter(tmp_path / f"a{i}", seed=i), name="a")
    reg.remove("a@v3")
    assert reg.put(make_adapter(tmp_path / "a9", seed=9), name="a").version == 4


def test_adapter_keeps_one_task(reg, tmp_path, folder):
    reg.put(folder, name="a")
    other = make_adapter(tmp_path / "det", task="detection")
    with pytest.raises(RegistryError, match="holds 'classification' versions"):
        reg.put(other, name="a")
    assert [r.version for r in reg.versions("a")] == [1]


def test_tag_moves_and_untag(reg, tmp_path):
    for i in range(2):
        reg.put(make_adapter(tmp_path / f"a{i}", seed=i), name="pose")
    assert reg.tag("pose@v1", "prod").aliases == ("prod",)
    assert reg.resolve("pose@prod").version == 1
    reg.tag("pose@v2", "prod")
    assert reg.resolve("pose@prod").version == 2
    assert reg.resolve("pose@v1").aliases == ()
    assert reg.list()[0].aliases == {"prod": 2}
    reg.untag("pose", "prod")
    with pytest.raises(NotFoundError, match="no alias 'prod'"):
        reg.resolve("pose@prod")
    with pytest.raises(NotFoundError, match="no alias 'prod'"):
        reg.untag("pose", "prod")
    with pytest.raises(RegistryError, match="automatic"):
        reg.untag("pose", "latest")


@pytest.mark.parametrize("alias", ["v3", "3", "v10", "latest", "../x", "a/b", "", "x" * 65, "pr\nod", "a@b"])
def test_alias_that_would_shadow_or_escape_is_refused(reg, folder, alias):
    reg.put(folder, name="pose")
    before = tree_snapshot(reg.root)
    with pytest.raises(InvalidNameError):
        reg.tag("pose@v1", alias)
    assert tree_snapshot(reg.root) == before
    assert reg.resolve("pose").aliases == ()


BAD_NAMES = ["../x", "..", "a/b", "a\\b", "", "x" * 300, "x" * 65, "a\x00b", "a\nb", "tab\tname", "a@b",
             ".hidden", "-dash", "Upper", "sp ace", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_and_registry_unchanged(reg, folder, name):
    reg.put(folder, name="ok")
    before = tree_snapshot(reg.root)
    with pytest.raises(InvalidNameError):
        reg.put(folder, name=name)
    with pytest.raises(InvalidNameError):
        reg.import_folder(folder, task="classification", name=name)
    with pytest.raises((InvalidNameError, NotFoundError)):
        reg.resolve(name)
    assert tree_snapshot(reg.root) == before
    assert [s.name for s in reg.list()] == ["ok"]


def test_long_name_error_is_clear(reg, folder):
    with pytest.raises(InvalidNameError, match="300 characters long; the limit is 64"):
        reg.put(folder, name="x" * 300)
    with pytest.raises(InvalidNameError, match="control characters"):
        reg.put(folder, name="a\x07")


def test_missing_things_give_clear_errors_with_suggestions(reg, tmp_path):
    for i in range(3):
        reg.put(make_adapter(tmp_path / f"a{i}", seed=i), name="pose")
    reg.remove("pose@v2")
    reg.tag("pose@v3", "prod")
    with pytest.raises(NotFoundError, match=r"no adapter named 'pse'.*Did you mean 'pose'"):
        reg.resolve("pse")
    with pytest.raises(NotFoundError, match="pose has no version v2; it has v1, v3"):
        reg.resolve("pose@v2")
    with pytest.raises(NotFoundError, match="pose has no version v7"):
        reg.materialize("pose@7")
    with pytest.raises(NotFoundError, match="Did you mean 'prod'"):
        reg.resolve("pose@prd")
    with pytest.raises(InvalidNameError, match="versions start at v1"):
        reg.resolve("pose@v0")
    with pytest.raises(InvalidNameError, match="nothing after '@'"):
        reg.resolve("pose@")


# -- lineage -------------------------------------------------------------------------------


def test_parents_are_pinned_and_lineage_walks_them(reg, tmp_path):
    reg.put(make_adapter(tmp_path / "a", seed=1), name="cls")
    reg.put(make_adapter(tmp_path / "b", seed=2), name="det", args={"epochs": 3})
    reg.tag("det@v1", "prod")
    merged = reg.put(make_adapter(tmp_path / "m", seed=3), name="multi", kind="merged",
                     parents=["cls", "det@prod"], args={"method": "linear", "weights": [0.5, 0.5]})
    assert merged.parents == ("cls@v1", "det@v1")
    small = reg.put(make_adapter(tmp_path / "c", seed=4), name="multi", kind="compressed",
                    parents=["multi@v1"], args={"rank": 2})
    tree = reg.lineage(small)
    assert tree.ref == "multi@v2" and tree.record.kind == "compressed"
    (parent,) = tree.parents
    assert parent.ref == "multi@v1" and parent.record.args["method"] == "linear"
    assert [p.ref for p in parent.parents] == ["cls@v1", "det@v1"]
    reg.remove("cls")
    gone = reg.lineage(small).parents[0].parents[0]
    assert gone.ref == "cls@v1" and gone.record is None
    with pytest.raises(NotFoundError):
        reg.put(make_adapter(tmp_path / "d", seed=5), name="x", parents=["nope@v1"])
    with pytest.raises(RegistryError, match="unknown version kind"):
        reg.put(make_adapter(tmp_path / "e", seed=6), name="x", kind="stolen")
    assert [s.name for s in reg.list()] == ["det", "multi"]


# -- list ----------------------------------------------------------------------------------


def test_list_summaries_and_task_filter(reg, tmp_path):
    reg.put(make_adapter(tmp_path / "a", seed=1), name="cls")
    reg.put(make_adapter(tmp_path / "b", seed=2, metrics={"accuracy": 0.9}), name="cls")
    reg.put(make_adapter(tmp_path / "c", task="detection", metrics={"map50": 0.4}), name="det")
    reg.tag("cls@v1", "prod")
    rows = {s.name: s for s in reg.list()}
    assert rows["cls"].versions == 2 and rows["cls"].latest == 2
    assert rows["cls"].aliases == {"prod": 1}
    assert rows["cls"].headline_metric is None  # latest has no known headline metric
    assert (rows["det"].headline_metric, rows["det"].headline_value) == ("map50", 0.4)
    assert rows["det"].base == "tiny-vit" and rows["det"].size == reg.resolve("det").size
    assert [s.name for s in reg.list(task="detection")] == ["det"]
    assert reg.list(task="pose") == []


# -- materialise, export, verify -----------------------------------------------------------


def test_materialize_gives_verified_files_inside_root(reg, folder):
    rec = reg.put(folder, name="a")
    out = reg.materialize("a")
    assert out.resolve().is_relative_to(reg.root.resolve())
    for fname in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "loradex.json"):
        assert (out / fname).read_bytes() == (folder / fname).read_bytes()
    assert reg.materialize(rec) == out  # reused


def _corrupt_blob(reg: Registry, sha: str) -> None:
    path = reg.blobs.path(sha)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_blob_is_named_on_materialize_and_verify(reg, tmp_path):
    reg.put(make_adapter(tmp_path / "a", seed=1), name="a")
    rec = reg.put(make_adapter(tmp_path / "b", seed=2), name="a")
    assert reg.verify() == []
    _corrupt_blob(reg, rec.files["adapter_model.safetensors"].sha256)
    with pytest.raises(IntegrityError, match=r"a@v2: adapter_model.safetensors is corrupt"):
        reg.materialize("a@v2")
    problems = reg.verify()
    assert len(problems) == 1 and problems[0].startswith("a@v2: adapter_model.safetensors: content hash")
    assert reg.verify("a@v1") == []
    assert len(reg.verify("a")) == 1
    reg.materialize("a@v1")  # the other version is unaffected


def test_corruption_after_materialize_is_caught(reg, folder):
    rec = reg.put(folder, name="a")
    reg.materialize(rec)
    _corrupt_blob(reg, rec.files["head.safetensors"].sha256)  # hard-linked: the cached copy changes too
    with pytest.raises(IntegrityError, match="a@v1: head.safetensors"):
        reg.materialize(rec)


def test_missing_blob_is_reported(reg, folder):
    rec = reg.put(folder, name="a")
    reg.blobs.path(rec.files["loradex.json"].sha256).unlink()
    assert reg.verify() == [f"a@v1: loradex.json: blob is missing (blob {rec.files['loradex.json'].sha256[:12]}…)"]
    with pytest.raises(IntegrityError, match="a@v1: loradex.json"):
        reg.materialize(rec)


def test_export_is_a_self_contained_copy(reg, folder, tmp_path):
    rec = reg.put(folder, name="a")
    out = reg.export("a@v1", tmp_path / "out" / "a")
    assert sorted(p.name for p in out.iterdir()) == sorted(rec.files)
    assert (out / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    (out / "README.md").write_text("edited")  # a copy, not a link into the store
    assert reg.verify() == []
    with pytest.raises(RegistryError, match="not an empty folder"):
        reg.export("a@v1", out)
    (tmp_path / "empty").mkdir()
    assert reg.export("a", tmp_path / "empty").is_dir()


def test_base_fingerprint_check(reg, folder, tmp_path):
    rec = reg.put(folder, name="a")
    reg.check_base(rec, rec.fingerprint)
    with pytest.raises(FingerprintMismatchError, match="a@v1 was trained on base 'tiny-vit'"):
        reg.check_base("a", "sha256:" + "00" * 32)
    reg.check_base("a", "sha256:" + "00" * 32, allow_mismatch=True)
    imported = reg.import_folder(write_peft_folder(tmp_path / "plain"), task="classification", name="plain")
    reg.check_base(imported, "sha256:" + "00" * 32)  # unknown fingerprint: nothing to compare


# -- remove and garbage collection ---------------------------------------------------------


def test_rm_refused_while_aliased_unless_forced(reg, tmp_path):
    reg.put(make_adapter(tmp_path / "a", seed=1), name="a")
    reg.put(make_adapter(tmp_path / "b", seed=2), name="a")
    reg.tag("a@v1", "prod")
    before = tree_snapshot(reg.root)
    with pytest.raises(RegistryError, match=r"in use by alias a@prod → v1.*--force"):
        reg.remove("a@v1")
    with pytest.raises(RegistryError, match="in use by alias"):
        reg.remove("a")
    assert tree_snapshot(reg.root) == before
    removed = reg.remove("a@prod", force=True)
    assert [r.ref for r in removed] == ["a@v1"]
    assert reg.resolve("a").aliases == () and [r.version for r in reg.versions("a")] == [2]


def test_rm_collects_only_unreferenced_blobs(reg, tmp_path):
    shared = make_adapter(tmp_path / "a", seed=1)
    reg.put(shared, name="a")
    reg.put(shared, name="b")
    b2 = reg.put(make_adapter(tmp_path / "c", seed=2), name="b")
    n = blob_count(reg)
    reg.materialize(b2)
    reg.remove("b@v2")
    assert blob_count(reg) < n
    assert not (reg.cache / "b" / "v2").exists()
    reg.remove("b")
    assert reg.verify() == [] and reg.materialize("a").is_dir()  # a shares b@v1's blobs
    reg.remove("a")
    assert blob_count(reg) == 0 and reg.list() == []
    with pytest.raises(NotFoundError):
        reg.remove("a")


# -- bad input -----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _make_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))


@pytest.mark.parametrize("damage", [_truncate, _make_pickle])
@pytest.mark.parametrize("fname", ["adapter_model.safetensors", "head.safetensors"])
def test_put_refuses_broken_or_pickled_safetensors(reg, folder, tmp_path, damage, fname):
    reg.put(make_adapter(tmp_path / "good", seed=5), name="a")
    before = tree_snapshot(reg.root)
    damage(folder / fname)
    expected = "Python pickle" if damage is _make_pickle else "not a valid safetensors file"
    with pytest.raises(ArtifactError, match=expected):
        reg.put(folder, name="a")
    with pytest.raises(ArtifactError, match=expected):
        reg.import_folder(folder, task="classification", name="a")
    assert tree_snapshot(reg.root) == before
    assert [r.version for r in reg.versions("a")] == [1]


def test_torch_zip_pickle_is_refused(reg, folder):
    import zipfile

    with zipfile.ZipFile(folder / "adapter_model.safetensors", "w") as archive:  # torch.save's layout
        archive.writestr("archive/data.pkl", pickle.dumps({"w": [0.0, 0.0]}))
    with pytest.raises(ArtifactError, match="PyTorch zip archive"):
        reg.put(folder, name="a")
    assert reg.list() == []


def test_put_needs_a_complete_folder(reg, folder):
    (folder / "loradex.json").unlink()
    with pytest.raises(ArtifactError, match="loradex.json: missing"):
        reg.put(folder, name="a")
    with pytest.raises(ArtifactError, match="not a folder"):
        reg.put(folder / "nope", name="a")
    assert reg.list() == [] and blob_count(reg) == 0


# -- import --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target_modules", "targets"),
    [
        (["query", "value"], ("attn.q", "attn.v")),
        (["q_proj", "v_proj", "fc1"], ("attn.q", "attn.v", "mlp.in")),
        (r"^encoder\.layer\.\d+\.attention\.attention\.(query|key)$", ("attn.q", "attn.k")),
        (r".*\.(attention\.output\.dense|value)$", ("attn.v", "attn.o")),
    ],
)
def test_import_plain_peft_folder(reg, tmp_path, target_modules, targets):
    src = write_peft_folder(tmp_path / "My_Adapter", config=peft_config(target_modules=target_modules))
    rec = reg.import_folder(src, task="classification")
    assert rec.ref == "my_adapter@v1" and rec.kind == "imported"
    assert rec.spec.lora.targets == targets
    assert rec.spec.lora.rank == 4 and rec.spec.lora.alpha == 8.0
    assert rec.spec.backbone.name == "tiny-vit" and rec.spec.backbone.fingerprint == ""
    assert rec.spec.head == {}
    assert rec.args["imported_from"] == str(src.resolve())
    assert "head.safetensors" in rec.files and "loradex.json" in rec.files
    if isinstance(target_modules, list):
        import re

        for name in target_modules:
            assert re.fullmatch(rec.spec.lora.target_modules, f"encoder.layer.0.attention.{name}")
        assert not re.fullmatch(rec.spec.lora.target_modules, "encoder.layer.0.attention.key")
    else:
        assert rec.spec.lora.target_modules == target_modules


def test_import_keeps_loradex_json_and_metrics(reg, tmp_path):
    src = make_adapter(tmp_path / "full", seed=3)
    rec = reg.import_folder(src, task="classification", name="full")
    assert rec.spec.head == {"labels": ["a", "b"]}
    assert rec.metrics["f1_macro"] == pytest.approx(0.503)
    with pytest.raises(ArtifactError, match="for task 'classification', not 'pose'"):
        reg.import_folder(src, task="pose", name="full")


def test_import_without_head(reg, tmp_path):
    rec = reg.import_folder(write_peft_folder(tmp_path / "nohead", head=False), task="classification")
    assert "head.safetensors" not in rec.files
    assert reg.verify() == []


def test_import_bad_folders_leave_registry_unchanged(reg, tmp_path, folder):
    reg.put(folder, name="keep")
    before = tree_snapshot(reg.root)

    no_config = write_peft_folder(tmp_path / "noconfig")
    (no_config / "adapter_config.json").unlink()
    with pytest.raises(ArtifactError, match="no adapter_config.json"):
        reg.import_folder(no_config, task="classification")

    pickled = write_peft_folder(tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").unlink()
    _make_pickle(pickled / "adapter_model.bin")
    with pytest.raises(ArtifactError, match="pickle-based weights.*adapter_model.bin"):
        reg.import_folder(pickled, task="classification")

    bad_json = write_peft_folder(tmp_path / "badjson")
    (bad_json / "adapter_config.json").write_text("{nope")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        reg.import_folder(bad_json, task="classification")

    unknown = write_peft_folder(tmp_path / "unknown", config=peft_config(target_modules=["conv"]))
    with pytest.raises(ArtifactError, match="cannot tell which"):
        reg.import_folder(unknown, task="classification")

    no_base = write_peft_folder(tmp_path / "nobase", config=peft_config(base=""))
    with pytest.raises(ArtifactError, match="base_model_name_or_path is empty"):
        reg.import_folder(no_base, task="classification")

    with pytest.raises(ArtifactError, match="not a folder"):
        reg.import_folder(tmp_path / "missing", task="classification")

    assert tree_snapshot(reg.root) == before
    assert [s.name for s in reg.list()] == ["keep"]


def test_imported_peft_adapter_loads_with_plain_peft(reg, tmp_path, tiny_backbone):
    """A script's own PEFT save → import → materialise → PeftModel.from_pretrained, same weights."""
    import copy

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    base = copy.deepcopy(tiny_backbone.model)
    modules = tiny_backbone.target_modules(["attn.q", "attn.v"])
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=modules, init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "script_out"))
    config_path = tmp_path / "script_out" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None  # as when a script builds its base from a config
    config_path.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="--base"):
        reg.import_folder(tmp_path / "script_out", task="classification", name="script")
    rec = reg.import_folder(tmp_path / "script_out", task="classification", name="script", base="tiny-vit")
    assert rec.spec.backbone.name == "tiny-vit"
    assert rec.spec.lora.targets == ("attn.q", "attn.v") and rec.spec.lora.rank == 2

    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_backbone.model), str(reg.materialize(rec)))
    want = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    got = loaded.state_dict()
    assert want and all(torch.equal(want[k], got[k]) for k in want)
