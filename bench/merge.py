"""Merges, compressions and merged exports: what they cost, and how much quality they keep.

    uv run python bench/merge.py --part timing           # vit-base-sized adapters, 2/4/8 of them
    uv run python bench/merge.py --part quality --home H # trained adapters (trains the defaults if H lacks them)

timing: wall time and peak memory (VmHWM of a fresh process, above one that only loaded the
base) of ``merge`` (cat, svd, knots, ties), ``compress`` (half rank; bf16) and ``export --merged``
for 2, 4 and 8 random ViT-Base-sized adapters (r=16 on q and v, 5-class heads).

quality: with trained classification, detection and pose adapters on the tiny-vit preset,
  1. the multi-task merge table: every method × each task's retained % (its primary metric on
     its own validation data, after / before), and the same with detection and pose fine-tuned
     from the classification adapter (``train --init``) merged as task vectors (``--base``);
  2. two classifiers trained on disjoint halves of the synthetic data (seeds 1 and 2), merged,
     against each of them on the full validation set (seed 0): trained independently, and
     fine-tuned from one small parent (600 images of seed 3, ``train --init``);
  3. compress to half the rank: each task's retained %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TIMING_CHILD = r"""
import json, sys, time
from pathlib import Path
from loradex.registry.store.registry import Registry
from loradex.core import plugins
op, home, out, refs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
registry = Registry.open(home)
records = [registry.resolve(r) for r in refs]
folders = [registry.materialize(r) for r in records]
backbone = plugins.resolve_backbone("vit-base").load("vit-base")   # what every operation starts from
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024
base = hwm()
start = time.perf_counter()
if op.startswith("merge-"):
    from loradex.registry.derive import merge
    inputs = [merge.load_input(r, f, backbone) for r, f in zip(records, folders)]
    merge.build(inputs, out, method=op.split("-", 1)[1], density=0.5 if op.endswith(("ties", "knots")) else None)
elif op.startswith("compress-"):
    from loradex.registry.derive import compress, merge
    item = merge.load_input(records[0], folders[0], backbone)
    kind = op.split("-", 1)[1]
    compress.build(folders[0], item.config, item.layers, records[0].spec, out,
                   rank=8 if kind == "half-rank" else None, energy=None, dtype="bf16" if kind == "bf16" else None)
else:
    from loradex.registry.derive.export_merged import export_merged
    export_merged(records[0], folders[0], out)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_above_base_MB": (hwm() - base) / 1e6}))
"""


def timing(work: Path) -> list[dict]:
    """Seconds and peak memory of each operation for 2, 4 and 8 ViT-Base-sized adapters."""
    from loradex.core import plugins
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    backbone = plugins.resolve_backbone("vit-base").load("vit-base")
    home = work / "timing-home"
    registry = Registry.open(home)
    refs = []
    for k in range(8):
        folder = random_adapter(work / f"vb{k}", "classification", backbone=backbone, rank=16, targets="q,v", seed=k,
                                scale=0.05)
        refs.append(registry.put(folder, name=f"vb{k}").ref)
    del backbone
    rows = []
    plan = [(op, n) for n in (2, 4, 8) for op in ("merge-cat", "merge-svd", "merge-knots", "merge-ties")]
    plan += [("compress-half-rank", 1), ("compress-bf16", 1), ("export-merged", 1)]
    for op, n in plan:
        out = work / f"out-{op}-{n}"
        done = subprocess.run([sys.executable, "-c", TIMING_CHILD, op, str(home), str(out), *refs[:n]],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr)
        row = {"op": op, "adapters": n, **json.loads(done.stdout.strip().splitlines()[-1])}
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        row["output_MB"] = round(size / 1e6, 2)
        rows.append(row)
        print(f"{op:<20} {n} adapters  {row['seconds']:7.2f} s  peak +{row['peak_above_base_MB']:7.1f} MB  "
              f"output {row['output_MB']:8.2f} MB", flush=True)
    return rows


FINE_TUNE = {"lr": 1e-3, "head_lr": 2e-3, "epochs": 6}
JOBS = (  # name, task, data, training settings, adapter to start from
    ("classification", "classification", None, {}, None),
    ("detection", "detection", None, {}, None),
    ("pose", "pose", None, {}, None),
    ("det-ft", "detection", None, {}, "classification"),
    ("pose-ft", "pose", None, {}, "classification"),
    ("half1", "classification", "synthetic:train=1500,seed=1", {}, None),
    ("half2", "classification", "synthetic:train=1500,seed=2", {}, None),
    ("parent", "classification", "synthetic:train=600,val=100,test=0,seed=3", {"epochs": 6}, None),
    ("ft1", "classification", "synthetic:train=1500,seed=1", FINE_TUNE, "parent"),
    ("ft2", "classification", "synthetic:train=1500,seed=2", FINE_TUNE, "parent"),
)


def ensure_trained(home: Path, work: Path) -> None:
    """Train every adapter of :data:`JOBS` into ``home`` where missing (``adapters train`` does the same)."""
    from loradex.core.training import TrainRequest, train_adapter
    from loradex.registry.store.registry import Registry

    registry = Registry.open(home)
    for name, task, data, settings, init in JOBS:
        if name in {s.name for s in registry.list()}:
            continue
        print(f"training {name} ({task}, {data or 'defaults'}{', from ' + init if init else ''}) ...", flush=True)
        start = registry.resolve(init) if init else None
        request = TrainRequest(task=task, data=data, project=work / "runs", train=settings,
                               init=registry.materialize(start) if start else None)
        outcome = train_adapter(request, progress=False, say=lambda line: None)
        registry.put(outcome.artifact_dir, name=name, parents=[start.ref] if start else [],
                     args={"data": data or "synthetic", "primary_metric": outcome.primary_metric})


def quality(home: Path, work: Path) -> dict:
    """The retained tables (see the module docstring)."""
    from loradex.registry.derive.sessions import compress_version, merge_versions
    from loradex.registry.derive.merge import METHODS
    from loradex.registry.store.registry import Registry

    ensure_trained(home, work)
    registry = Registry.open(home)
    report: dict = {"multitask": [], "multitask_base": [], "halves": {}, "compress": []}

    def table(inputs: list[str], key: str, base: str | None, title: str) -> None:
        print(f"\n{title} (retained % of each task's metric)", flush=True)
        print(f"{'method':<16}{'weights':<10}{'density':<9}{'classif.':>9}{'detect.':>9}{'pose':>9}{'mean':>8}")
        for method in METHODS:
            for weights in ([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]):
                densities = (None,) if not METHODS[method].density else ((1.0, 0.5) if method == "knots" else (0.5,))
                for density in densities:
                    try:
                        done = merge_versions(registry, inputs, name=f"{key}-{len(report[key])}", method=method,
                                              weights=weights, density=density, base=base)
                    except Exception as exc:  # noqa: BLE001 - a method that refuses these inputs says why
                        print(f"{method:<16}refused: {exc}", flush=True)
                        continue
                    kept = [m.retained for m in done.measurements]
                    report[key].append({"method": method, "weights": weights, "density": density, "retained": kept,
                                        "update_error": done.details["update_error"]})
                    cells = "".join(f"{v:9.1f}" if v is not None else "        -" for v in kept)
                    mean = sum(v for v in kept if v is not None) / max(1, sum(v is not None for v in kept))
                    print(f"{method:<16}{weights[0]:<10g}{'' if density is None else density:<9}{cells}{mean:8.1f}",
                          flush=True)
        best = max(report[key], key=lambda r: min(v or 0 for v in r["retained"]))
        print(f"best by worst task: {best['method']} w={best['weights'][0]} d={best['density']} "
              f"-> {', '.join(f'{v:.1f}%' for v in best['retained'])}", flush=True)

    table(["classification", "detection", "pose"], "multitask", None,
          "multi-task merge of classification + detection + pose, each trained on its own")
    table(["classification", "det-ft", "pose-ft"], "multitask_base", "classification",
          "the same, detection and pose fine-tuned from the classification adapter, merged with --base")

    print("\ntwo classifiers on disjoint halves (seeds 1, 2), merged; macro-F1 on the full validation set (seed 0)")
    from loradex.core import plugins
    from loradex.core.inference import evaluate_dataset
    from loradex.registry.loading import load

    merged = {}
    for pair in (("half1", "half2"), ("ft1", "ft2")):
        for method in ("cat", "ties", "knots"):
            merged[pair + (method,)] = merge_versions(registry, list(pair), name=f"{pair[0]}-{method}",
                                                      method=method).record.ref
    model = load(["half1", "half2", "parent", "ft1", "ft2", *merged.values()], registry=registry)
    task = plugins.get_task("classification")
    data = task.load_data("synthetic:train=8,val=250,test=0,seed=0", transform=model.backbone.transform_at(64),
                          image_size=64, seed=0)
    scores = {}
    for key in model.adapters:
        head = model.adapters[key].heads[0]
        result, _ = evaluate_dataset(task, model, data.val, head_config=head.config, adapter=head.key)
        scores[key] = result.metrics["f1_macro"]
        print(f"  {key:<22} f1_macro {scores[key]:.4f}", flush=True)
    report["halves"] = scores

    print("\ncompress to half the rank (r=16 -> 8)")
    for name in ("classification", "detection", "pose"):
        done = compress_version(registry, name, rank=8, name=f"{name}-r8")
        (m,) = done.measurements
        report["compress"].append({"adapter": name, **m.to_dict(), "size_before": done.details["size_before"],
                                   "size_after": done.details["size_after"]})
        print(f"  {name:<15} {m.metric} {m.before:.4f} -> {m.after:.4f}  retained {m.retained:.1f}%  size "
              f"{done.details['size_before']:,} -> {done.details['size_after']:,} bytes", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="timing,quality")
    parser.add_argument("--home", type=Path, default=None, help="Registry with trained adapters (quality).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {}
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as scratch:
        work = Path(scratch)
        if "timing" in args.part:
            report["timing"] = timing(work)
        if "quality" in args.part:
            report["quality"] = quality(args.home or work / "quality-home", work)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
