"""Real data on a real pretrained base: LoRA vs a linear probe vs full fine-tuning, multi-task, merges.

    apt-get install dataset-fashion-mnist              # Fashion-MNIST (Debian, MIT)
    uv pip install --no-deps deepforest==2.1.0          # aerial trees with Pascal VOC XML (MIT)
    uv run python bench/real_data.py [--work DIR] [--parts fashion,digits,trees,multitask,merge]

Data (bench/real_datasets.py): Fashion-MNIST (a fixed 10k train / 2k val subset, the full 10k
test set), scikit-learn's digits (70/30), deepforest's trees (tiled, LabelImg-style VOC XML, split 80/20).
Bases: ``tiny-vit`` (random init) and ``efficientnet-lite0`` (ImageNet-pretrained).

For each classification set and base, one after the other on the same images at the same size:
- ``loradex``: ``adapters train`` with the task's defaults for that base (nothing tuned here);
- ``probe``:   a linear head on the frozen base's pooled features (transformers Trainer);
- ``full``:    every weight of the base trained, plus the head (Trainer);
- ``peft``:    the same LoRA as loradex's (targets, rank, alpha, lr, epochs) written as a plain
  PEFT + Trainer script: the side-by-side baseline.
Printed: wall time of the whole job (data loading included) and test accuracy. Trees: loradex
detection on both bases, mAP@.5 on the val tiles. Then the three efficientnet-lite0 adapters on
one base predicted together (each task's score, and the time against three separate models), and
the multi-task merge table (retained % of each task's score, on its own validation data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import real_datasets  # noqa: E402

BASES = ("efficientnet-lite0", "tiny-vit")
SIZES = {"fashion": {"efficientnet-lite0": 64, "tiny-vit": 32}, "digits": {"efficientnet-lite0": 64, "tiny-vit": 32},
         "trees": {"efficientnet-lite0": 384, "efficientnet-lite0-os16": 384, "tiny-vit": 384}}
TREE_BASES = ("efficientnet-lite0", "efficientnet-lite0-os16", "tiny-vit")
"""os8 is left out: 80 s an epoch on 2 cores (mAP@.5 0.084 after 10 of 30 epochs when it was stopped)."""
"""Trees are 20-40 px: the stride-32 grid (12x12 at 384 px) is too coarse; os16 is the same weights, dilated."""
TREES = {"epochs": 30, "batch_size": 8, "patience": 8}
"""38 training tiles: detection's defaults (6 epochs over a thousand scenes) would see them 6 times."""


def accuracy(model, dataset, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model(pixel_values) -> logits`` on ``dataset``."""
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    right = total = 0
    with torch.no_grad():
        for pixels, labels in DataLoader(dataset, batch_size=batch_size):
            right += int((model(pixel_values=pixels)["logits"].argmax(-1) == labels).sum())
            total += len(labels)
    return right / total


def trainer_run(mode: str, base: str, root: Path, size: int, spec: dict, work: Path) -> dict:
    """``probe``, ``full`` or ``peft`` with a plain transformers Trainer on loradex's own image tensors."""
    import torch
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from loradex.core import plugins
    from loradex.core.data import ImageDataset, image_folder

    start = time.perf_counter()
    backbone = plugins.resolve_backbone(base).load(base)
    transform = backbone.transform_at(size)
    splits = image_folder(root, seed=0).splits
    data = {name: ImageDataset([p for p, _ in items], [t for _, t in items], transform) for name, items in splits.items()}
    labels = sorted({t for _, t in splits["train"]})
    encoder = backbone.model
    if mode == "peft":
        from peft import LoraConfig, get_peft_model

        lora = spec["lora"]
        encoder = get_peft_model(encoder, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"],
                                                     target_modules=lora["target_modules"]))
    elif mode == "full":
        encoder.requires_grad_(True)

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.norm = nn.LayerNorm(backbone.hidden_size)
            self.head = nn.Linear(backbone.hidden_size, len(labels))

        def train(self, mode_: bool = True):
            super().train(mode_)
            if mode_ and mode != "full":  # a frozen base keeps its batch-norm statistics, as loradex does
                for module in self.encoder.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            return self

        def forward(self, pixel_values, labels=None):
            logits = self.head(self.norm(backbone.encode(self.encoder, pixel_values).cls))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    model = Classifier()
    train = spec["train"]
    lr = {"probe": train["head_lr"] or train["lr"], "full": 5e-4, "peft": train["lr"]}[mode]

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, dataset) -> None:
            self.dataset = dataset

        def __len__(self) -> int:
            return len(self.dataset)

        def __getitem__(self, index):
            pixels, label = self.dataset[index]
            return {"pixel_values": pixels, "labels": label}

    steps = -(-len(data["train"]) // train["batch_size"]) * train["epochs"]
    args = TrainingArguments(output_dir=str(work / f"trainer-{mode}"), per_device_train_batch_size=train["batch_size"],
                             num_train_epochs=train["epochs"], learning_rate=lr, weight_decay=train["weight_decay"],
                             warmup_steps=int(train["warmup_ratio"] * steps), lr_scheduler_type=train["scheduler"],
                             save_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, use_cpu=True, seed=0)
    Trainer(model=model, args=args, train_dataset=Pairs(data["train"])).train()
    test = data.get("test") or data["val"]
    return {"accuracy": accuracy(model, test), "seconds": time.perf_counter() - start,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def loradex_run(task: str, base: str, root: Path, size: int, registry, name: str, work: Path,
                overrides: dict | None = None) -> dict:
    """``adapters train`` in-process with the defaults for ``base``; the adapter is stored as ``name``."""
    from loradex.core.training import TrainRequest, train_adapter

    start = time.perf_counter()
    outcome = train_adapter(TrainRequest(task=task, data=str(root), backbone=base, project=work / "runs",
                                         run_name=name, train={"image_size": size, **(overrides or {})}),
                            progress=False, say=lambda line: None)
    seconds = time.perf_counter() - start
    registry.put(outcome.artifact_dir, name=name, args={"data": str(root), "primary_metric": outcome.primary_metric})
    metrics = outcome.metrics
    lora, head = outcome.result.model.trainable_parameters()
    result = {"seconds": seconds, "spec": outcome.spec.to_dict(), "metrics": metrics,
              "trainable": sum(p.numel() for p in [*lora, *head])}
    key = "test_accuracy" if "test_accuracy" in metrics else "accuracy" if task == "classification" else "map50"
    result["score"] = metrics.get(key, metrics.get(outcome.primary_metric))
    return result


def classification_part(dataset: str, root: Path, registry, work: Path, report: dict) -> None:
    """The four ways to train, on both bases."""
    print(f"\n{dataset}: {root}", flush=True)
    print(f"{'base':<20}{'method':<10}{'trainable':>11}{'seconds':>10}{'test acc':>10}", flush=True)
    for base in BASES:
        size = SIZES[dataset][base]
        name = f"{dataset}-{base}"
        if name not in report:
            report[name] = loradex_run("classification", base, root, size, registry, name, work)
            save(work, report)
        ours = report[name]
        lora = ours["spec"]["lora"]
        trainable = f"{ours['trainable']:,}" if "trainable" in ours else "-"
        print(f"{base:<20}{'loradex':<10}{trainable:>11}{ours['seconds']:10.1f}{ours['score']:10.4f}", flush=True)
        for mode in ("probe", "full", "peft"):
            key = f"{name}-{mode}"
            if key not in report:
                report[key] = trainer_run(mode, base, root, size, {"lora": lora, "train": ours["spec"]["train"]}, work)
            row = report[key]
            print(f"{base:<20}{mode:<10}{row['trainable']:>11,}{row['seconds']:10.1f}{row['accuracy']:10.4f}", flush=True)
        save(work, report)


def trees_part(root: Path, registry, work: Path, report: dict) -> None:
    """Detection from VOC XML on both bases: mAP@.5 on the val tiles."""
    print(f"\ntrees: {root}", flush=True)
    for base in TREE_BASES:
        name = f"trees-{base}"
        if name not in report:
            report[name] = loradex_run("detection", base, root, SIZES["trees"][base], registry, name, work, TREES)
        row = report[name]
        print(f"{base:<20}{'loradex':<10}{row['seconds']:10.1f} s  mAP@.5 {row['metrics'].get('map50', 0):.4f}",
              flush=True)
    save(work, report)


def multitask_part(roots: dict[str, Path], registry, report: dict, work: Path) -> None:
    """Fashion + digits + trees on one efficientnet-lite0: each task's score, and time against separate models."""
    from loradex.core import plugins
    from loradex.core.inference import evaluate_dataset
    from loradex.registry.loading import load

    names = {"fashion": ("classification", "test"), "digits": ("classification", "test"), "trees": ("detection", "val")}
    refs = [f"{d}-efficientnet-lite0" for d in names]
    print("\nmulti-task: three adapters on one efficientnet-lite0", flush=True)
    start = time.perf_counter()
    model = load(refs, registry=registry)
    shared: dict[str, float] = {}
    for (dataset, (task_name, split)), ref in zip(names.items(), refs):
        task = plugins.get_task(task_name)
        head = model.adapters[registry.resolve(ref).ref].heads[0]
        data = task.load_data(str(roots[dataset]), transform=model.backbone.transform_at(head.image_size),
                              image_size=head.image_size, seed=0)
        result, _ = evaluate_dataset(task, model, getattr(data, split), head_config=head.config, adapter=head.key)
        shared[dataset] = result.metrics[task.primary_metric if task_name == "detection" else "accuracy"]
    shared_seconds = time.perf_counter() - start
    alone = {d: report[f"{d}-efficientnet-lite0"]["score"] for d in names}
    print(f"{'task':<10}{'alone':>10}{'shared':>10}", flush=True)
    for dataset in names:
        print(f"{dataset:<10}{alone[dataset]:10.4f}{shared[dataset]:10.4f}", flush=True)
    base_mb = sum(p.numel() * p.element_size() for p in model.backbone.model.parameters()) / 1e6
    adapters_mb = sum(a.nbytes for a in model.adapters.values()) / 1e6
    print(f"one base ({base_mb:.1f} MB) loaded once with three adapters ({adapters_mb:.2f} MB): "
          f"{shared_seconds:.1f} s to load and score every set", flush=True)
    report["multitask"] = {"alone": alone, "shared": shared, "seconds": shared_seconds}
    save(work, report)


def merge_part(registry, report: dict, work: Path) -> None:
    """Merge the three efficientnet-lite0 adapters with each method: retained % per task."""
    from loradex.registry.derive.sessions import merge_versions

    refs = [f"{d}-efficientnet-lite0" for d in ("fashion", "digits", "trees")]
    print("\nmulti-task merge of fashion + digits + trees on efficientnet-lite0 (retained % of each task's metric)",
          flush=True)
    print(f"{'method':<12}{'weights':<9}{'density':<9}{'fashion':>9}{'digits':>9}{'trees':>9}{'mean':>8}", flush=True)
    rows = []
    for method, weights, density in (("cat", 1.0, None), ("svd", 1.0, None), ("linear", 1.0, None),
                                     ("ties", 1.0, 0.5), ("ties", 0.5, 0.5), ("knots", 1.0, 0.5)):
        try:
            done = merge_versions(registry, refs, name=f"merged-{len(rows)}", method=method, weights=[weights] * 3,
                                  density=density)
        except Exception as exc:  # noqa: BLE001 - a method that refuses these inputs says why
            print(f"{method:<12}refused: {exc}", flush=True)
            continue
        kept = [m.retained for m in done.measurements]
        rows.append({"method": method, "weights": weights, "density": density, "retained": kept})
        cells = "".join(f"{v:9.1f}" if v is not None else "        -" for v in kept)
        mean = sum(v for v in kept if v is not None) / max(1, sum(v is not None for v in kept))
        print(f"{method:<12}{weights:<9g}{'' if density is None else density:<9}{cells}{mean:8.1f}", flush=True)
    report["merge"] = rows
    save(work, report)


def save(work: Path, report: dict) -> None:
    """The figures so far, as JSON (a re-run continues from them)."""
    (work / "real_data.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-results/real_data"))
    parser.add_argument("--parts", default="fashion,digits,trees,multitask,merge")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORADEX_HOME", str(work / "home"))
    from loradex.registry.store.registry import Registry

    registry = Registry.open(work / "home")
    saved = work / "real_data.json"
    report = json.loads(saved.read_text()) if saved.is_file() else {}
    roots = {"fashion": real_datasets.write_fashion(work / "data" / "fashion"),
             "digits": real_datasets.write_digits(work / "data" / "digits"),
             "trees": real_datasets.write_trees(work / "data" / "trees")}
    parts = args.parts.split(",")
    for dataset in ("fashion", "digits"):
        if dataset in parts:
            classification_part(dataset, roots[dataset], registry, work, report)
    if "trees" in parts:
        trees_part(roots["trees"], registry, work, report)
    if "multitask" in parts:
        multitask_part(roots, registry, report, work)
    if "merge" in parts:
        merge_part(registry, report, work)


if __name__ == "__main__":
    main()
