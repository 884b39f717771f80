"""Every case of the bad-input corpus: one line on stderr, exit != 0, nothing written, registry unchanged."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from loradex.core import plugins
from loradex.registry.cli import cli
from loradex.registry.store.registry import Registry
from loradex.testing import random_adapter

from .bad_input_corpus import CASES, Case


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A registry holding one classification adapter, ``shapes@v1`` (random weights, rank 8)."""
    root = tmp_path_factory.mktemp("corpus")
    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    with Registry.open(root / "home") as registry:
        registry.put(random_adapter(root / "shapes", "classification", backbone=backbone), name="shapes",
                     args={"data": "synthetic:train=8,val=8,test=0"})
    return root / "home"


def state(home):
    """Versions and verify's verdict."""
    runner = CliRunner()
    listed = runner.invoke(cli, ["--home", str(home), "list", "--json"])
    verified = runner.invoke(cli, ["--home", str(home), "verify"])
    return json.loads(listed.stdout) if listed.exit_code == 0 else listed.output, verified.exit_code


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, pristine, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(pristine, home)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    project = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    before = state(home)
    assert before[1] == 0
    blobs = sorted(p.name for p in (home / "blobs").rglob("*"))
    if case.damages_index:
        db = home / "index.db"
        db.write_bytes(os.urandom(db.stat().st_size))
    args = case.make(scratch)
    assert args, f"case {case.id} built no command"
    if args[0] == "train" and "--project" not in args and "--config" not in args:
        args += ["--project", str(project)]
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    assert result.exit_code != 0, f"{case.id}: exit 0\n{result.output}"
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("Warning:", "backbone:"))]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert case.message in lines[-1], f"{case.id}: {lines[-1]!r} does not say {case.message!r}"
    assert not (project.exists() and any(project.rglob("train*"))), "a run folder was left behind"
    if case.damages_index:
        assert sorted(p.name for p in (home / "blobs").rglob("*")) == blobs, "a blob was lost"
    else:
        assert state(home) == before, "the registry changed"
