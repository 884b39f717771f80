"""The registry under real processes: concurrent writers, and a writer killed mid-version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from loradex.registry.store.registry import Registry

try:
    from tests.registry_helpers import make_adapter
except ImportError:  # tests/ run as plain folder
    from registry_helpers import make_adapter  # type: ignore[no-redef]

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from loradex.registry.store.registry import Registry

    root, go, proc, folders = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    reg = Registry.open(root)
    while not go.exists():
        time.sleep(0.005)
    for i, folder in enumerate(folders):
        reg.put(Path(folder), name="shared", args={"proc": proc, "i": i})
    """
)

COLLECTOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from loradex.registry.store.registry import Registry

    root, go, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    reg = Registry.open(root)
    while not go.exists():
        time.sleep(0.005)
    while not stop.exists():
        reg.gc()
        time.sleep(0.01)
    """
)


def _run(script: str, *args: object) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_eight_processes_register_eighty_versions(tmp_path):
    root, go, stop = tmp_path / "reg", tmp_path / "go", tmp_path / "stop"
    Registry.open(root).close()
    folders = {p: [make_adapter(tmp_path / f"src-{p}-{i}", seed=p * 10 + i) for i in range(10)] for p in range(8)}
    writers = [_run(WRITER, root, go, p, *folders[p]) for p in range(8)]
    collector = _run(COLLECTOR, root, go, stop)  # garbage collection racing the writers
    go.touch()
    for proc in writers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    stop.touch()
    _, err = collector.communicate(timeout=60)
    assert collector.returncode == 0, err.decode()

    with Registry.open(root) as reg:
        records = reg.versions("shared")
        assert [r.version for r in records] == list(range(1, 81))
        assert sorted((r.args["proc"], r.args["i"]) for r in records) == [(p, i) for p in range(8) for i in range(10)]
        for r in records:  # each version holds exactly the weights its writer put
            src = folders[r.args["proc"]][r.args["i"]] / "adapter_model.safetensors"
            assert (reg.materialize(r) / "adapter_model.safetensors").read_bytes() == src.read_bytes()
        assert reg.verify() == []
        assert reg.list()[0].versions == 80 and reg.list()[0].latest == 80


CRASHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from loradex.registry.store import blobs, index
    from loradex.registry.store.registry import Registry

    mode, root, folder, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    if mode == "blob":  # stall half-way through writing the second new blob
        original, calls = blobs._copy_hashing, []
        def stalling(src, dst):
            calls.append(1)
            if len(calls) < 2:
                return original(src, dst)
            dst.write(src.read(64)); dst.flush()
            ready.touch(); time.sleep(120)
        blobs._copy_hashing = stalling
    else:  # stall inside the transaction, after the version row and its files are inserted
        original = index.Index._insert_files
        def stalling(self, conn, version_id, files):
            original(self, conn, version_id, files)
            ready.touch(); time.sleep(120)
        index.Index._insert_files = stalling
    Registry.open(root).put(folder, name="crash")
    """
)


@pytest.mark.parametrize("mode", ["blob", "commit"])
def test_writer_killed_mid_version_leaves_no_trace(tmp_path, mode):
    root, ready = tmp_path / "reg", tmp_path / "ready"
    with Registry.open(root) as reg:
        reg.put(make_adapter(tmp_path / "first", seed=1), name="crash")
    child = _run(CRASHER, mode, root, make_adapter(tmp_path / "second", seed=2), ready)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert child.poll() is None, child.communicate()[1].decode()
        assert time.monotonic() < deadline, "the writer never reached the crash point"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with Registry.open(root) as reg:
        assert [r.ref for r in reg.versions("crash")] == ["crash@v1"]
        assert reg.list()[0].versions == 1
        problems = reg.verify()  # leftovers of the dead writer are reported, nothing else
        assert all(p.startswith(("blobs: ", "tmp: ")) for p in problems), problems
        if mode == "blob":
            assert any(reg.blobs.tmp.iterdir())  # the half-written file is only in tmp/
            assert any(p.startswith("tmp: 1 leftover of interrupted writes") for p in problems)
        reg.gc()
        assert not any(reg.blobs.tmp.iterdir())
        referenced = reg.index.referenced_blobs()
        assert set(reg.blobs.all()) == referenced  # orphans of the dead writer are collected
        again = reg.put(make_adapter(tmp_path / "third", seed=3), name="crash")
        assert again.ref == "crash@v2"
        assert reg.verify() == []
