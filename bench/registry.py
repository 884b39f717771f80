"""Registry scale: `adapters list --json` and `adapters show` over 1,000 and 10,000 versions.

Builds a registry of 10,000 versions (500 adapters x 20 versions). A sample goes through
the real ``Registry.put``; the rest through the same insert code in batched transactions
(identical rows: same blobs, spec, metrics, lineage; only name, number and args differ).
Times listing and showing in-process (API) and through the CLI, and compares listing with
a baseline that keeps one JSON file (spec + metrics) per version in a folder per adapter
and scans them, as a folder-per-run layout would. Prints per-version cost at each size so growth is visible.

    .venv/bin/python bench/registry.py [--versions 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from loradex.core.spec import AdapterSpec, BackboneRef, LoraSettings
from loradex.registry.store.index import NewVersion
from loradex.registry.store.registry import Registry, utc_now

PER_ADAPTER = 20
DISTINCT = 6
SAMPLE_PUTS = 40


def make_folder(folder: Path, seed: int) -> Path:
    """A complete adapter folder of realistic size (rank-8 LoRA on a 192-wide, 6-layer ViT)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    spec = AdapterSpec(
        task=("classification", "detection", "pose")[seed % 3],
        backbone=BackboneRef(name="tiny-vit", fingerprint="sha256:" + "ab" * 32, architecture="vit"),
        lora=LoraSettings(rank=8, alpha=16, targets=("attn.q", "attn.v"),
                          target_modules=r"^encoder\.layer\.\d+\.attention\.attention\.(query|value)$"),
        head={"labels": [f"class{i}" for i in range(10)]},
    )
    weights = {
        f"base_model.model.encoder.layer.{i}.attention.attention.{m}.lora_{ab}.weight":
            rng.standard_normal((8, 192) if ab == "A" else (192, 8)).astype(np.float32)
        for i in range(6) for m in ("query", "value") for ab in ("A", "B")
    }
    save_file(weights, str(folder / "adapter_model.safetensors"))
    save_file({"fc.weight": rng.standard_normal((10, 192)).astype(np.float32)}, str(folder / "head.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "base_model_name_or_path": "tiny-vit",
         "target_modules": spec.lora.target_modules}))
    (folder / "loradex.json").write_text(spec.to_json())
    metric = ("f1_macro", "map50", "pck@0.1")[seed % 3]
    (folder / "metrics.json").write_text(json.dumps({metric: 0.5 + seed / 100, "loss": 0.3}))
    return folder


def build(reg: Registry, folders: list[Path], start: int, stop: int, baseline: Path) -> float:
    """Add versions ``start``..``stop-1`` (global numbering); returns seconds spent in put()."""
    prepared: dict[int, NewVersion] = {}
    docs: dict[int, str] = {}
    put_seconds = 0.0
    batch: list[NewVersion] = []
    for n in range(start, stop):
        adapter = n // PER_ADAPTER
        name, src = f"adapter-{adapter:04d}", adapter % 3 + 3 * (n % 2)  # one task per adapter
        version = n % PER_ADAPTER + 1
        parents = [f"{name}@v{version - 1}"] if version > 1 else []
        args = {"seed": n, "epochs": 10}
        if n < SAMPLE_PUTS:
            t0 = time.perf_counter()
            reg.put(folders[src], name=name, parents=parents, args=args)
            put_seconds += time.perf_counter() - t0
        else:
            if src not in prepared:  # exactly what put() stores for this folder
                sources = {f.name: f for f in folders[src].iterdir()}
                new = reg._prepare(name=name, spec=AdapterSpec.from_json((folders[src] / "loradex.json").read_text()),
                                   sources=sources, kind="trained", parents=(), args=args, metrics=None,
                                   folder_metrics=json.loads((folders[src] / "metrics.json").read_text()),
                                   where=str(folders[src]))
                prepared[src] = replace(new, files=tuple(reg._store_blobs(sources)))
            batch.append(replace(prepared[src], name=name, parents=tuple(parents), args=args, created=utc_now()))
            if len(batch) == 1000:
                reg.index.insert_many(batch)
                batch = []
        if src not in docs:
            docs[src] = json.dumps({"spec": json.loads((folders[src] / "loradex.json").read_text()),
                                    "metrics": json.loads((folders[src] / "metrics.json").read_text())})
        (baseline / name).mkdir(exist_ok=True)  # the baseline: one JSON file per version
        (baseline / name / f"v{version}.json").write_text(docs[src])
    if batch:
        reg.index.insert_many(batch)
    return put_seconds


def baseline_list(root: Path) -> list[dict]:
    """`list` without an index: scan every adapter folder and parse each version's JSON."""
    rows = []
    for adapter in sorted(root.iterdir()):
        docs = {int(v.stem[1:]): json.loads(v.read_text()) for v in adapter.iterdir()}
        latest = max(docs)
        spec, metrics = docs[latest]["spec"], docs[latest]["metrics"]
        rows.append({"name": adapter.name, "task": spec["task"], "versions": len(docs), "latest": latest,
                     "base": spec["backbone"]["name"], "metrics": metrics})
    return rows


def median_time(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli_command() -> list[str]:
    """The `adapters` console script beside this interpreter, else the module entry point."""
    script = Path(sys.executable).with_name("adapters")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from loradex.registry.cli import main; main()"]


def time_cli(root: Path, *args: str, repeat: int = 3) -> float:
    """Median seconds of one `adapters --home ROOT ARGS` process, output discarded."""
    cmd = [*cli_command(), "--home", str(root), *args]

    def once() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)

    once()  # warm the file cache
    return median_time(once, repeat)


def measure(reg: Registry, root: Path, baseline: Path, n: int) -> dict[str, float]:
    """All timings at the current size ``n``."""
    ref = f"adapter-{(n - 1) // PER_ADAPTER:04d}"

    def show() -> None:
        record = reg.resolve(ref)
        reg.lineage(record)
        reg.versions(record.name)

    return {
        "api list": median_time(lambda: [s.to_dict() for s in reg.list()], 7),
        "api show": median_time(show, 7),
        "cli startup (--help)": time_cli(root, "--help"),
        "cli list --json": time_cli(root, "list", "--json"),
        "cli show --json": time_cli(root, "show", ref, "--json"),
        "baseline scan list": median_time(lambda: baseline_list(baseline), 3),
    }


def main() -> None:
    """Build, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, default=None, help="Build here and keep it (default: a temp folder).")
    opts = parser.parse_args()
    work = opts.keep or Path(tempfile.mkdtemp(prefix="loradex-bench-"))
    root, baseline, src = work / "registry", work / "baseline", work / "sources"
    for path in (root, baseline):
        shutil.rmtree(path, ignore_errors=True)
    baseline.mkdir(parents=True)
    folders = [make_folder(src / f"s{i}", i) for i in range(DISTINCT)]
    sizes = [s for s in (1_000, opts.versions) if s <= opts.versions]
    results: dict[int, dict[str, float]] = {}
    t_build = time.perf_counter()
    put_seconds = 0.0
    done = 0
    with Registry.open(root) as reg:
        for size in sizes:
            put_seconds += build(reg, folders, done, size, baseline)
            done = size
            results[size] = measure(reg, root, baseline, size)
        problems = reg.verify()
    build_s = time.perf_counter() - t_build
    print(f"registry at {root}: {done} versions, {done // PER_ADAPTER} adapters, built in {build_s:.1f} s "
          f"(real put(): {put_seconds / SAMPLE_PUTS * 1000:.1f} ms per version over {SAMPLE_PUTS}); "
          f"verify: {'clean' if not problems else problems[:3]}")
    print(f"{'operation':<22}" + "".join(f"{f'{s:,} versions':>26}" for s in sizes)
          + (f"{'growth':>10}" if len(sizes) == 2 else ""))
    for op in results[sizes[0]]:
        cells = "".join(
            f"{results[s][op]:>10.3f} s {results[s][op] / s * 1e6:>7.1f} us/v" for s in sizes
        )
        growth = f"{results[sizes[-1]][op] / results[sizes[0]][op]:>9.1f}x" if len(sizes) == 2 else ""
        print(f"{op:<22}{cells}{growth}")
    last = results[sizes[-1]]
    print(f"list vs baseline scan at {sizes[-1]:,}: API {last['baseline scan list'] / last['api list']:.0f}x faster; "
          f"CLI (whole process) {last['baseline scan list'] / last['cli list --json']:.1f}x faster")
    verdict = "OK" if last["cli list --json"] < 0.5 else "SLOW"
    print(f"`adapters list --json` over {sizes[-1]:,} versions: {last['cli list --json']:.3f} s "
          f"(target < 0.5 s): {verdict}")
    if opts.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
