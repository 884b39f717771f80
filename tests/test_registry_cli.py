"""The registry commands (list, show, tag, untag, rm, import, export, verify) through click."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from loradex.registry.store.registry import Registry

try:
    from tests.registry_helpers import cli_group, make_adapter, write_peft_folder
except ImportError:  # tests/ run as plain folder
    from registry_helpers import cli_group, make_adapter, write_peft_folder  # type: ignore[no-redef]


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "reg"
    with Registry.open(root) as reg:
        reg.put(make_adapter(tmp_path / "a1", seed=1), name="pose")
        reg.put(make_adapter(tmp_path / "a2", seed=2), name="pose", kind="merged", parents=["pose@v1"],
                args={"method": "linear"})
        reg.put(make_adapter(tmp_path / "c1", seed=3, task="detection", metrics={"map50": 0.25}), name="det")
    return root


def run(home, *args):
    return CliRunner().invoke(cli_group(), ["--home", str(home), *args])


def test_list_json_and_table(home):
    result = run(home, "list", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["name"] for d in data] == ["det", "pose"]
    pose = data[1]
    assert pose["versions"] == 2 and pose["latest"] == 2 and pose["task"] == "classification"
    assert pose["headline"] == {"metric": "f1_macro", "value": 0.502} and pose["base"] == "tiny-vit"
    assert [d["name"] for d in json.loads(run(home, "list", "--task", "detection", "--json").stdout)] == ["det"]
    table = run(home, "list")
    assert table.exit_code == 0
    for text in ("pose", "det", "classification", "map50 0.2500", "tiny-vit"):
        assert text in table.stdout


def test_show_json_has_spec_metrics_lineage_files(home):
    data = json.loads(run(home, "show", "pose", "--json").stdout)
    assert data["ref"] == "pose@v2" and data["kind"] == "merged"
    assert data["spec"]["task"] == "classification" and data["metrics"]["accuracy"] == 0.6
    assert data["lineage"]["parents"][0]["ref"] == "pose@v1"
    assert data["lineage"]["parents"][0]["kind"] == "trained"
    files = data["files"]
    assert len(files["adapter_model.safetensors"]["sha256"]) == 64 and files["head.safetensors"]["size"] > 0
    assert [v["version"] for v in data["versions"]] == [1, 2]
    table = run(home, "show", "pose@v2")
    assert table.exit_code == 0
    for text in ("pose@v2", "merged", "pose@v1", "adapter_model.safetensors", files["loradex.json"]["sha256"]):
        assert text in table.stdout


def test_tag_untag_and_rm_flow(home):
    assert run(home, "tag", "pose@v1", "prod").exit_code == 0
    assert json.loads(run(home, "show", "pose@prod", "--json").stdout)["version"] == 1
    refused = run(home, "rm", "pose@v1")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: pose@v1 is in use by alias pose@prod") and "Traceback" not in refused.output
    assert run(home, "untag", "pose@prod").exit_code == 0
    gone = run(home, "rm", "pose@v1")
    assert gone.exit_code == 0 and "removed pose@v1" in gone.stdout
    assert run(home, "tag", "pose@v2", "stable").exit_code == 0
    forced = run(home, "rm", "pose", "--force")
    assert forced.exit_code == 0 and "removed pose@v2" in forced.stdout
    assert [d["name"] for d in json.loads(run(home, "list", "--json").stdout)] == ["det"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "../x"), "may not contain '/'"),
        (("show", "pse"), "Did you mean 'pose'"),
        (("show", "pose@v9"), "pose has no version v9; it has v1–v2"),
        (("tag", "pose@v1", "v3"), "looks like a version"),
        (("tag", "pose@v1", "latest"), "kept by the registry"),
        (("untag", "pose"), "NAME@ALIAS"),
        (("untag", "pose@latest"), "automatic"),
        (("rm", "a/b"), "may not contain '/'"),
        (("verify", "nope"), "no adapter named 'nope'"),
    ],
)
def test_user_errors_are_one_line(home, args, message):
    result = run(home, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_import_and_export(home, tmp_path):
    src = write_peft_folder(tmp_path / "script-out", seed=7)
    result = run(home, "import", str(src), "--task", "classification", "--name", "hand")
    assert result.exit_code == 0, result.output
    assert "hand@v1" in result.stdout and "head configuration is unknown" in result.stderr
    (tmp_path / "bad").mkdir()
    bad = run(home, "import", str(tmp_path / "bad"), "--task", "classification")
    assert bad.exit_code == 1 and "no adapter_config.json" in bad.stderr
    out = tmp_path / "exported"
    exported = run(home, "export", "hand@v1", str(out))
    assert exported.exit_code == 0, exported.output
    assert (out / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    assert (out / "adapter_config.json").is_file() and (out / "loradex.json").is_file()


def test_verify_reports_corruption_and_exits_nonzero(home):
    clean = run(home, "verify")
    assert clean.exit_code == 0 and "no problems" in clean.stdout
    with Registry.open(home) as reg:
        sha = reg.resolve("pose@v1").files["head.safetensors"].sha256
        path = reg.blobs.path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"garbage")
    result = run(home, "verify")
    assert result.exit_code == 1
    assert "pose@v1: head.safetensors: size is 7 bytes" in result.stdout
    assert result.stderr.startswith("Error: 1 problem found")
    as_json = run(home, "verify", "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False
    assert run(home, "verify", "det").exit_code == 0
    assert run(home, "verify", "pose@v2").exit_code == 0


def test_empty_registry_list(tmp_path):
    result = run(tmp_path / "empty", "list")
    assert result.exit_code == 0 and "No adapters" in result.stderr
    assert json.loads(run(tmp_path / "empty", "list", "--json").stdout) == []


def test_home_falls_back_to_loradex_home(isolated_home, tmp_path):
    with Registry.open(isolated_home) as reg:
        reg.put(make_adapter(tmp_path / "x", seed=1), name="envy")
    result = CliRunner().invoke(cli_group(), ["list", "--json"])
    assert [d["name"] for d in json.loads(result.stdout)] == ["envy"]


def test_one_predict_of_three_refs_looks_each_up_once(tmp_path, monkeypatch):
    """Issue 23.2: `adapters predict name@v3` resolved the same ref four times (predict, load, locate,
    materialize); now the record found once is passed down."""
    from collections import Counter

    from PIL import Image

    from .registry_helpers import random_shelf

    home = random_shelf(tmp_path, [("a", "classification", {"seed": 1}), ("b", "classification", {"seed": 2}),
                                   ("b", "classification", {"seed": 3}), ("c", "pose", {"seed": 4})])
    with Registry.open(home) as registry:
        registry.tag("c@v1", "prod")
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    lookups = Counter()
    real = Registry.resolve

    def counted(self, ref):
        lookups[ref if isinstance(ref, str) else f"record {ref.ref}"] += 1
        return real(self, ref)

    monkeypatch.setattr(Registry, "resolve", counted)
    result = run(home, "predict", "a,b@v1,c@prod", str(image), "--json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)[0]["predictions"]) == ["a@v1", "b@v1", "c@v1"]
    assert lookups == Counter({"a": 1, "b@v1": 1, "c@prod": 1})
