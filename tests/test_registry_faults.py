"""The registry under damage: an emptied or corrupt index, a read-only home, stray files, dead writers."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from loradex.core.errors import IndexDamagedError, ReadOnlyRegistryError, RegistryError
from loradex.registry.cli import cli
from loradex.registry.store.registry import Registry

from .registry_helpers import make_adapter, tree_snapshot


@pytest.fixture
def home(tmp_path):
    """A registry with two adapters (three versions) and an alias."""
    root = tmp_path / "home"
    with Registry.open(root) as registry:
        registry.put(make_adapter(tmp_path / "a1", seed=1), name="alpha")
        registry.put(make_adapter(tmp_path / "a2", seed=2), name="alpha")
        registry.put(make_adapter(tmp_path / "b1", seed=3), name="beta")
        registry.tag("alpha@v1", "prod")
    return root


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)])


def one_line(result, message):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, result.stderr


def blob_files(home):
    return sorted(p for p in (home / "blobs").rglob("*") if p.is_file())


def test_an_emptied_index_loses_nothing_and_repair_brings_every_version_back(home, tmp_path):
    blobs = blob_files(home)
    (home / "index.db").write_bytes(b"")  # `: > index.db`
    for suffix in ("-wal", "-shm"):
        (home / f"index.db{suffix}").unlink(missing_ok=True)
    verified = run(home, "verify")
    assert verified.exit_code != 0
    assert "index: lost 3 versions that manifests record (alpha@v1, alpha@v2, beta@v1)" in verified.stdout
    one_line(run(home, "rm", "alpha"), "no adapter named 'alpha'")
    with Registry.open(home) as registry:  # a write on an index that forgot versions is refused
        with pytest.raises(IndexDamagedError, match="lost 3 versions"):
            registry.put(make_adapter(tmp_path / "c", seed=9), name="gamma")
        with pytest.raises(IndexDamagedError, match="nothing was deleted"):
            registry.gc()
    assert blob_files(home) == blobs, "no blob may be deleted while the index is not trusted"
    repaired = run(home, "verify", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "restored 3 versions from manifests" in repaired.stdout and "restored alpha@prod → v1" in repaired.stdout
    listed = {row["name"]: row for row in json.loads(run(home, "list", "--json").stdout)}
    assert listed["alpha"]["versions"] == 2 and listed["alpha"]["aliases"] == {"prod": 1}
    assert run(home, "export", "alpha@prod", tmp_path / "out").exit_code == 0


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_a_corrupt_index_is_one_line_everywhere_and_repair_rebuilds_it(home, damage):
    db = home / "index.db"
    with Registry.open(home):
        pass  # checkpointed: the rows are in index.db itself
    data = db.read_bytes()
    db.write_bytes(os.urandom(len(data)) if damage == "random" else data[: len(data) // 3])
    for suffix in ("-wal", "-shm"):
        (home / f"index.db{suffix}").unlink(missing_ok=True)
    for args in (["list"], ["show", "alpha"], ["tag", "alpha@v2", "x"], ["rm", "beta"]):
        one_line(run(home, *args), "run `adapters verify --repair`")
    verified = run(home, "verify")
    assert verified.exit_code != 0 and "index.db" in verified.stdout and "Traceback" not in verified.output
    repaired = run(home, "verify", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert any(p.name.startswith("index.db.damaged-") for p in home.iterdir())
    assert [r["name"] for r in json.loads(run(home, "list", "--json").stdout)] == ["alpha", "beta"]


def test_a_read_only_registry_lists_shows_predicts_and_exports_but_refuses_changes(home, tmp_path, monkeypatch):
    import loradex.registry.store.registry as store

    with Registry.open(home):
        pass
    before = tree_snapshot(home)
    monkeypatch.setattr(store.os, "access", lambda path, mode: mode != os.W_OK)  # what a read-only mount reports
    assert json.loads(run(home, "list", "--json").stdout)[0]["name"] == "alpha"
    assert run(home, "show", "alpha@prod", "--json").exit_code == 0
    assert run(home, "export", "alpha@v2", tmp_path / "exported").exit_code == 0
    assert (tmp_path / "exported" / "adapter_model.safetensors").is_file()
    for args in (["tag", "alpha@v2", "new"], ["rm", "beta"], ["untag", "alpha@prod"]):
        one_line(run(home, *args), "is read-only")
    with Registry.open(home) as registry:
        assert registry.read_only
        folder = registry.materialize("alpha@v1")  # somewhere outside the read-only home
        assert not folder.is_relative_to(home) and (folder / "loradex.json").is_file()
        with pytest.raises(ReadOnlyRegistryError):
            registry.put(make_adapter(tmp_path / "c", seed=7), name="gamma")
    assert tree_snapshot(home) == before


def test_stray_files_under_blobs_are_ignored_and_reported(home):
    (home / "blobs" / ".DS_Store").write_bytes(b"finder")
    some = next(p for p in (home / "blobs").iterdir() if p.is_dir())
    (some / ".DS_Store").write_bytes(b"finder")
    result = run(home, "rm", "beta")
    assert result.exit_code == 0, result.output
    assert "removed beta@v1" in result.stdout
    assert [r["name"] for r in json.loads(run(home, "list", "--json").stdout)] == ["alpha"]
    verified = run(home, "verify")
    assert "blobs: 2 files that are not blobs" in verified.stdout
    assert (home / "blobs" / ".DS_Store").is_file(), "foreign files are left alone"


def test_leftovers_of_a_killed_writer_are_reported_and_cleaned_by_the_next_write(home, tmp_path):
    stale = home / "tmp" / "blob-999999999-abc.part"  # no process has this pid
    stale.write_bytes(b"x" * 1_000_000)
    verified = run(home, "verify")
    assert verified.exit_code != 0 and "tmp: 1 leftover of interrupted writes (1.0 MB)" in verified.stdout
    mine = home / "tmp" / f"blob-{os.getpid()}-live.part"  # a live writer's file is kept
    mine.write_bytes(b"y")
    with Registry.open(home) as registry:
        registry.put(make_adapter(tmp_path / "c", seed=5), name="gamma")
    assert not stale.exists() and mine.exists()
    mine.unlink()
    assert run(home, "verify").exit_code == 0


def test_a_version_number_beyond_sqlite_integers_is_one_line(home):
    one_line(run(home, "show", "alpha@v99999999999999999999"), "is out of range")


@pytest.mark.parametrize("header_len", [0x280, 0x380, 0x480, 0x580])
def test_a_safetensors_header_length_that_looks_like_a_pickle_opcode_is_safetensors(tmp_path, header_len):
    """Issue 22.11: the first bytes 80 02..05 are a pickle protocol mark AND a valid header length."""
    import json as json_module
    import pickle

    import numpy as np
    from safetensors.numpy import load_file

    from loradex.core.errors import ArtifactError
    from loradex.registry.store.weights import check_safetensors

    header = json_module.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "head.safetensors"
    path.write_bytes(header_len.to_bytes(8, "little") + header.ljust(header_len, b" ")
                     + np.array([1.5, -2.0], np.float32).tobytes())
    assert path.read_bytes()[:1] == b"\x80"
    assert list(check_safetensors(path)) == ["w"] and load_file(str(path))["w"].tolist() == [1.5, -2.0]
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(pickle.dumps({"w": [1.5]}, protocol=2))
    with pytest.raises(ArtifactError, match="is a Python pickle, not safetensors"):
        check_safetensors(fake)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_never_enter_the_registry(tmp_path, bad):
    """Issue 22.3: import (and put, which train, merge, compress and pull store through) refuse NaN/inf."""
    from click.testing import CliRunner
    from safetensors.numpy import load_file, save_file

    from loradex.core.errors import ArtifactError
    from loradex.registry.cli import cli
    from loradex.registry.store.registry import Registry

    from .registry_helpers import make_adapter, write_peft_folder

    plain = write_peft_folder(tmp_path / "peft", seed=1)
    lora = load_file(str(plain / "adapter_model.safetensors"))
    key = sorted(lora)[0]
    lora[key][0, 0] = bad
    save_file(lora, str(plain / "adapter_model.safetensors"))
    home = tmp_path / "home"
    result = CliRunner().invoke(cli, ["--home", str(home), "import", str(plain), "--task", "classification"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"tensor {key!r} holds 1 NaN or infinite value" in result.stderr.strip().splitlines()[-1]
    folder = make_adapter(tmp_path / "full", seed=2)
    head = load_file(str(folder / "head.safetensors"))
    head["classifier.weight"][:] = bad
    save_file(head, str(folder / "head.safetensors"))
    with Registry.open(home) as registry:
        with pytest.raises(ArtifactError, match="tensor 'classifier.weight' holds .* NaN or infinite values"):
            registry.put(folder, name="x")
        assert registry.list() == [] and registry.verify() == []


def test_an_index_with_pages_overwritten_but_its_header_intact_is_repaired(home):
    """Issue 22.5: the header still opens, so only an integrity check shows the damage; repair rebuilds."""
    db = home / "index.db"
    with Registry.open(home):
        pass  # checkpointed: the rows are in index.db itself
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    data[page:] = os.urandom(len(data) - page)  # every page but the first (header and schema) overwritten
    db.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (home / f"index.db{suffix}").unlink(missing_ok=True)
    one_line(run(home, "list"), "run `adapters verify --repair`")
    verified = run(home, "verify")
    assert verified.exit_code != 0 and "verify --repair" in verified.stdout and "Traceback" not in verified.output
    repaired = run(home, "verify", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "rebuilt from manifests" in repaired.stdout
    listed = {row["name"]: row for row in json.loads(run(home, "list", "--json").stdout)}
    assert listed["alpha"]["versions"] == 2 and listed["alpha"]["aliases"] == {"prod": 1}
    assert listed["beta"]["versions"] == 1
    assert run(home, "verify").exit_code == 0


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_list_on_an_index_that_lost_every_version_says_so_not_no_adapters(home, how):
    """Issue 22.19: `adapters list` said "No adapters" with exit 0 while manifests held three versions."""
    db = home / "index.db"
    for suffix in ("-wal", "-shm"):
        (home / f"index.db{suffix}").unlink(missing_ok=True)
    if how == "emptied":
        db.write_bytes(b"")
    else:
        db.unlink()
    one_line(run(home, "list"), "holds no versions, but 3 version manifests exist")
    assert run(home, "verify", "--repair").exit_code == 0
    assert len(json.loads(run(home, "list", "--json").stdout)) == 2


def test_a_writer_waiting_for_a_held_lock_names_the_holder_and_times_out_in_one_line(home, tmp_path, monkeypatch):
    """Issue 22.9: a writer waited forever and silently for another process's registry lock."""
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(home / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("LORADEX_LOCK_TIMEOUT", "1")
        started = time.monotonic()
        result = run(home, "rm", "beta")
        assert time.monotonic() - started < 30
        one_line(result, f"is still held by pid {holder.pid} (python")
        assert "LORADEX_LOCK_TIMEOUT" in result.stderr and f"held by pid {holder.pid}" in result.stderr.splitlines()[0]
    finally:
        holder.kill()
        holder.wait()
    assert run(home, "rm", "beta").exit_code == 0  # released with its holder


def test_a_name_held_by_another_task_is_refused_before_any_work_and_leaves_no_blob(home, tmp_path):
    """Issue 22.6: merge/train/compress into a name of another task failed after the work, leaving orphans."""
    blobs = blob_files(home)
    one_line(run(home, "train", "detection", "--name", "alpha"), "adapter 'alpha' holds 'classification' versions")
    with Registry.open(home) as registry:
        folder = make_adapter(tmp_path / "c", seed=4)
        spec = json.loads((folder / "loradex.json").read_text())
        spec["task"] = "pose"
        (folder / "loradex.json").write_text(json.dumps(spec))
        with pytest.raises(RegistryError, match="holds 'classification' versions, not 'pose'"):
            registry.put(folder, name="alpha")
        registry.put(folder, name="delta")  # a name that holds pose versions
    blobs = blob_files(home)
    one_line(run(home, "merge", "alpha@v1", "beta", "--name", "delta"), "adapter 'delta' holds 'pose' versions")
    one_line(run(home, "compress", "alpha@v1", "--rank", "2", "--name", "delta"), "holds 'pose' versions")
    assert blob_files(home) == blobs and run(home, "verify").exit_code == 0


def test_verify_repair_removes_blobs_no_version_references(home):
    with Registry.open(home) as registry:
        orphan = registry.blobs.path("ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a refused store")
    found = run(home, "verify")
    assert found.exit_code != 0 and "referenced by no version" in found.stdout
    repaired = run(home, "verify", "--repair")
    assert repaired.exit_code == 0 and "removed 1 blob no version references" in repaired.stdout
    assert not orphan.exists() and run(home, "verify").exit_code == 0


def test_scratch_folders_of_killed_processes_are_reported_and_removed(home):
    """Issue 22.10: a killed merge left loradex-merge-*, every demo start loradex-demo-*, forever."""
    import tempfile
    from pathlib import Path

    from loradex.core.scratch import make_scratch, remove_dead_scratch, scratch_folder

    dead = Path(tempfile.gettempdir()) / "loradex-merge-999999-left"
    dead.mkdir(exist_ok=True)
    (dead / "merged.safetensors").write_bytes(b"x" * 100)
    found = run(home, "verify")  # reported, but it fails no registry: any loradex process may have left it
    assert found.exit_code == 0 and f"note: {dead} was left by a loradex process that died" in found.stderr
    repaired = run(home, "verify", "--repair")
    assert repaired.exit_code == 0 and not dead.exists()
    dead.mkdir()
    with scratch_folder("merge") as mine:  # making a scratch folder sweeps dead ones first
        assert not dead.exists() and Path(mine).name.startswith(f"loradex-merge-{os.getpid()}-")
        assert remove_dead_scratch() == 0 and Path(mine).exists()  # a live process's folder stays
    kept = make_scratch("demo")
    assert kept.is_dir() and kept.name.startswith(f"loradex-demo-{os.getpid()}-")
    kept.rmdir()


def test_every_public_index_query_turns_sqlite_faults_into_one_line():
    """Issue 23.4: a loop monkey-patched every Index method; now each public query is decorated with
    @_guarded, and this test keeps a new one from being left out."""
    import inspect

    from loradex.registry.store.index import Index

    public = [name for name, member in vars(Index).items()
              if inspect.isfunction(member) and not name.startswith("_") and name not in ("read", "close")]
    assert public and [n for n in public if not hasattr(getattr(Index, n), "__wrapped__")] == []
