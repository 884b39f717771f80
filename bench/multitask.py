"""Many adapters on one base: loradex's LoRA bank against PEFT's two paths and K merged models.

    uv run python bench/multitask.py                       # tiny-vit and vit-base (about 15 minutes)
    uv run python bench/multitask.py --backbones tiny-vit --rounds 9

For each backbone, K adapters (random LoRA r=16 on q and v plus a 5-class head) and n images
per adapter (each adapter its own images, as a server receives them), this script times one
pass of all K*n images through

  (a) loradex: MultiTaskModel, rows sorted by adapter, the LoRA bank applying each adapter
      to its contiguous slice (merged on the fly for large slices);
  (b) PEFT's mixed batch: one PeftModel holding the K adapters, ``adapter_names`` per row;
  (c) PEFT's ``set_adapter``: the same PeftModel, one adapter at a time;
  (d) K merged models: K copies of the base with their LoRA merged in (``merge_and_unload``).

Every method runs at most 32 rows per pass through the base (the batch that ran fastest on
this CPU) and ends with each adapter's head. Each round runs a, b, c, d (starting with a
different one each round), and the medians are compared: the ratios a/b, a/c and a/d (> 1: loradex is faster). Also printed: the bytes of
weights each method holds, the peak RSS of a process holding 8 adapters (loradex) or 8 merged
models against the base alone, and the time to attach a stored ViT-Base-sized adapter against
the number already attached (loradex vs PEFT's ``load_adapter``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROWS = 32
SETTINGS = {"tiny-vit": ((1, 3, 8), (1, 32)), "vit-base": ((1, 3, 8), (1, 8))}


def build_adapters(backbone, count: int, folder: Path) -> list[Path]:
    """``count`` classification adapters with random LoRA weights (r=16 on q, v)."""
    from loradex.testing import random_adapter

    return [random_adapter(folder / f"a{k}", "classification", backbone=backbone, rank=16, targets="q,v", seed=k,
                           scale=0.05) for k in range(count)]


def weight_bytes(*modules) -> int:
    """Bytes of the distinct tensors (parameters and buffers) the modules hold."""
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


class Methods:
    """The four ways of running K adapters, built once per (backbone, K)."""

    def __init__(self, name: str, folders: list[Path]) -> None:
        import torch

        from loradex.core import plugins
        from loradex.testing import attach
        from loradex.core.multitask import MultiTaskModel

        load = plugins.resolve_backbone(name).load
        self.keys = [f"a{k}" for k in range(len(folders))]
        self.bank = MultiTaskModel(load(name), device="cpu")
        for key, folder in zip(self.keys, folders):
            self.bank.attach(key, folder)
        task = plugins.get_task("classification")
        peft = load(name)
        model = peft
        for key, folder in zip(self.keys, folders):
            model = attach(model, task, folder, adapter_name=key)
        self.peft = model  # a TaskModel: PeftModel encoder + heads
        self.merged = []
        for key, folder in zip(self.keys, folders):
            alone = attach(load(name), task, folder)
            alone.encoder = alone.encoder.merge_and_unload()
            self.merged.append(alone.eval())
        self.torch = torch

    def memory(self) -> dict[str, int]:
        """Bytes of weights each method holds."""
        lora = self.bank._bank.nbytes()
        return {"a": weight_bytes(self.bank.base, self.bank.heads) + lora,
                "bc": weight_bytes(self.peft),
                "d": weight_bytes(*self.merged),
                "base": weight_bytes(self.bank.base)}

    def loradex(self, pixels, n: int):
        from loradex.core.backbone import EncoderOutput
        from loradex.core.lora_runtime import Segment

        plan = [Segment(self.bank.adapters[k].lora, i * n, (i + 1) * n) for i, k in enumerate(self.keys)]
        features = self.bank.encode_rows(pixels, plan, batch_size=ROWS)
        return [self.bank.adapters[k].heads[0].module(EncoderOutput(features.cls[i * n:(i + 1) * n],
                                                                    features.patches[i * n:(i + 1) * n]))
                for i, k in enumerate(self.keys)]

    def peft_mixed(self, pixels, n: int):
        names = [k for k in self.keys for _ in range(n)]
        features = [self.peft.backbone.encode(self.peft.encoder, pixels[s:s + ROWS], adapter_names=names[s:s + ROWS])
                    for s in range(0, len(names), ROWS)]
        cls = self.torch.cat([f.cls for f in features])
        patches = self.torch.cat([f.patches for f in features])
        from loradex.core.backbone import EncoderOutput

        return [self.peft.heads[k](EncoderOutput(cls[i * n:(i + 1) * n], patches[i * n:(i + 1) * n]))
                for i, k in enumerate(self.keys)]

    def peft_switching(self, pixels, n: int):
        outs = []
        for i, key in enumerate(self.keys):
            rows = pixels[i * n:(i + 1) * n]
            outs.append(self.torch.cat([self.peft(rows[s:s + ROWS], adapter=key) for s in range(0, n, ROWS)]))
        return outs

    def merged_models(self, pixels, n: int):
        outs = []
        for i, model in enumerate(self.merged):
            rows = pixels[i * n:(i + 1) * n]
            outs.append(self.torch.cat([model(rows[s:s + ROWS]) for s in range(0, n, ROWS)]))
        return outs


def throughput(name: str, ks: tuple[int, ...], ns: tuple[int, ...], rounds: int, workdir: Path) -> list[dict]:
    """Images/s of a, b, c, d for each K and n (alternating rounds, medians)."""
    import torch

    from loradex.core import plugins

    backbone = plugins.resolve_backbone(name).load(name)
    size = backbone.image_size
    folders = build_adapters(backbone, max(ks), workdir / name)
    rows = []
    for k in ks:
        methods = Methods(name, folders[:k])
        memory = methods.memory()
        runners = {"a": methods.loradex, "b": methods.peft_mixed, "c": methods.peft_switching, "d": methods.merged_models}
        for n in ns:
            torch.manual_seed(0)
            pixels = torch.randn(k * n, 3, size, size)
            with torch.inference_mode():
                reference = [o.float() for o in runners["d"](pixels, n)]
                diffs = {m: max(float((x - y).abs().max()) for x, y in zip(run(pixels, n), reference))
                         for m, run in runners.items() if m != "d"}
                times: dict[str, list[float]] = {m: [] for m in runners}
                order = list(runners)
                for round_index in range(rounds):  # the order turns each round: no method always goes first
                    for m in order[round_index % 4:] + order[:round_index % 4]:
                        run = runners[m]
                        start = time.perf_counter()
                        run(pixels, n)
                        times[m].append(time.perf_counter() - start)
            rate = {m: k * n / statistics.median(t) for m, t in times.items()}
            row = {"backbone": name, "K": k, "n": n, **{f"{m}_img_s": round(v, 2) for m, v in rate.items()},
                   "a/b": round(rate["a"] / rate["b"], 3), "a/c": round(rate["a"] / rate["c"], 3),
                   "a/d": round(rate["a"] / rate["d"], 3), "max_abs_diff_vs_merged": max(diffs.values()),
                   "weights_MB": {m: round(v / 1e6, 1) for m, v in memory.items()}}
            rows.append(row)
            print(f"{name:8s} K={k} n={n:2d}  a {rate['a']:7.2f}  b {rate['b']:7.2f}  c {rate['c']:7.2f}  "
                  f"d {rate['d']:7.2f} img/s   a/b {row['a/b']:.2f}  a/c {row['a/c']:.2f}  a/d {row['a/d']:.2f}  "
                  f"(max |a-d| {diffs['a']:.1e}; weights MB: base {memory['base'] / 1e6:.1f}, a "
                  f"{memory['a'] / 1e6:.1f} = {memory['a'] / memory['base']:.3f}x, d {memory['d'] / 1e6:.1f})",
                  flush=True)
        del methods
    return rows


def attach_times(count: int, workdir: Path) -> dict:
    """ms per attach of stored ViT-Base-sized adapters against how many are attached already."""
    from loradex.core import plugins
    from loradex.testing import attach
    from loradex.registry.loading import RegistrySource
    from loradex.registry.store.registry import Registry
    from loradex.core.multitask import MultiTaskModel

    load = plugins.resolve_backbone("vit-base").load
    backbone = load("vit-base")
    folders = build_adapters(backbone, count, workdir / "attach")
    registry = Registry.open(workdir / "attach-home")
    for k, folder in enumerate(folders):
        registry.put(folder, name=f"vb{k}")
        registry.materialize(f"vb{k}")  # files in place and in the page cache
    for folder in folders:
        for f in folder.iterdir():
            f.read_bytes()
    model = MultiTaskModel(backbone, source=RegistrySource(registry))
    ours = []
    for k in range(count):
        start = time.perf_counter()
        model.add(f"vb{k}")
        ours.append((time.perf_counter() - start) * 1000)
    peft_times = []
    task = plugins.get_task("classification")
    other = load("vit-base")
    for k, folder in enumerate(folders):
        start = time.perf_counter()
        other = attach(other, task, folder, adapter_name=f"vb{k}")
        peft_times.append((time.perf_counter() - start) * 1000)
    before = model._bank.nbytes()
    model.remove("vb0")
    freed = before - model._bank.nbytes()
    return {"loradex_ms": [round(t, 1) for t in ours], "peft_ms": [round(t, 1) for t in peft_times],
            "loradex_median_ms": round(statistics.median(ours), 1),
            "loradex_10th_over_1st": round(ours[-1] / ours[0], 2),
            "peft_median_ms": round(statistics.median(peft_times), 1),
            "peft_10th_over_1st": round(peft_times[-1] / peft_times[0], 2),
            "bytes_freed_by_remove": freed, "lora_bytes_per_adapter": before // count}


MEMORY_CHILD = """
import json, sys, torch
from pathlib import Path
from loradex.core import plugins
from loradex.testing import attach
from loradex.core.multitask import MultiTaskModel
name, mode, folders = sys.argv[1], sys.argv[2], [Path(p) for p in sys.argv[3:]]
load = plugins.resolve_backbone(name).load
backbone = load(name) if mode != "empty" else None
pixels = torch.randn(8, 3, backbone.image_size, backbone.image_size) if backbone else None
with torch.inference_mode():
    if mode == "empty":
        pass
    elif mode == "base":
        backbone.model(pixel_values=pixels)
    elif mode == "loradex":
        from loradex.core.lora_runtime import Segment
        model = MultiTaskModel(backbone)
        for k, folder in enumerate(folders):
            model.attach(f"a{k}", folder)
        model.encode_rows(pixels, [Segment(a.lora, k, k + 1) for k, a in enumerate(model.adapters.values())])
    else:
        task = plugins.get_task("classification")
        models = [attach(load(name) if k else backbone, task, folder) for k, folder in enumerate(folders)]
        for model in models:
            model.encoder = model.encoder.merge_and_unload()
            model(pixels[:1])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps(int(hwm.split()[1]) * 1024))
"""


def peak_memory(name: str, count: int, workdir: Path) -> dict:
    """Peak RSS of fresh processes: imports only, the base alone, loradex with ``count`` adapters, merged models.

    The ratios compare what each holds above the imports (torch's own libraries are most of a
    process here), one pass of ``count`` images included.
    """
    from loradex.core import plugins

    folders = build_adapters(plugins.resolve_backbone(name).load(name), count, workdir / f"mem-{name}")
    out = {}
    for mode in ("empty", "base", "loradex", "merged"):
        done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, name, mode, *map(str, folders)],
                              capture_output=True, text=True, check=True)
        out[mode] = int(done.stdout.strip().splitlines()[-1])
    above = {m: out[m] - out["empty"] for m in ("base", "loradex", "merged")}
    return {"backbone": name, "adapters": count, "peak_rss_MB": {m: round(v / 1e6, 1) for m, v in out.items()},
            "loradex/base": round(above["loradex"] / above["base"], 3),
            "merged/base": round(above["merged"] / above["base"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="tiny-vit,vit-base")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds per setting (default: 15 tiny-vit, 3 vit-base).")
    parser.add_argument("--attach", type=int, default=10, help="ViT-Base adapters to attach one after another.")
    parser.add_argument("--only", default="throughput,attach,memory",
                        help="Which parts to run (comma list of throughput, attach, memory).")
    parser.add_argument("--json", type=Path, default=None, help="Also write every figure to this JSON file.")
    args = parser.parse_args()
    import torch

    torch.set_grad_enabled(False)
    report: dict = {"threads": torch.get_num_threads(), "throughput": [], "memory": []}
    with tempfile.TemporaryDirectory(prefix="bench-multitask-") as scratch:
        work = Path(scratch)
        parts = set(args.only.split(","))
        for name in args.backbones.split(",") if "throughput" in parts else ():
            ks, ns = SETTINGS[name]
            rounds = args.rounds or (15 if name == "tiny-vit" else 3)
            report["throughput"] += throughput(name, ks, ns, rounds, work)
        if args.attach and "attach" in parts:
            report["attach"] = attach_times(args.attach, work)
            a = report["attach"]
            print(f"attach ViT-Base adapter: loradex median {a['loradex_median_ms']} ms, 10th/1st "
                  f"{a['loradex_10th_over_1st']}; PEFT load_adapter median {a['peft_median_ms']} ms, 10th/1st "
                  f"{a['peft_10th_over_1st']}; remove freed {a['bytes_freed_by_remove'] / 1e6:.2f} MB", flush=True)
            print("  loradex ms:", a["loradex_ms"], "\n  PEFT ms:   ", a["peft_ms"], flush=True)
        for name in args.backbones.split(",") if "memory" in parts else ():
            mem = peak_memory(name, 8, work)
            report["memory"].append(mem)
            rss = mem["peak_rss_MB"]
            print(f"peak RSS {name} (imports alone {rss['empty']} MB): base {rss['base']} MB, loradex + 8 adapters "
                  f"{rss['loradex']} MB, 8 merged models {rss['merged']} MB; above the imports, loradex/base "
                  f"{mem['loradex/base']}x, merged/base {mem['merged/base']}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
