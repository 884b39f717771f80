"""Real data on a real pretrained base: LoRA vs a linear probe vs full fine-tuning, multi-task, merges.

    apt-get install dataset-fashion-mnist              # Fashion-MNIST (Debian, MIT)
    uv pip install --no-deps deepforest==2.1.0          # aerial trees with Pascal VOC XML (MIT)
    uv run python bench/real_data.py [--work DIR] [--parts fashion,digits,scenes,boxes,trees,multitask,merge]

Data (bench/real_datasets.py): Fashion-MNIST (a fixed 10k train / 2k val subset, the full 10k
test set), scikit-learn's digits (70/30), deepforest's trees (tiled, LabelImg-style VOC XML, split 80/20).
Bases: ``tiny-vit`` (random init) and ``efficientnet-lite0`` (ImageNet-pretrained).

For each classification set and base, one after the other on the same images at the same size:
- ``loradex``: ``adapters train`` with the task's defaults for that base (nothing tuned here);
- ``probe``:   a linear head on the frozen base's pooled features (transformers Trainer);
- ``full``:    every weight of the base trained, plus the head (Trainer);
- ``peft``:    the same LoRA as loradex's (targets, rank, alpha, lr, epochs) written as a plain
  PEFT + Trainer script: the side-by-side baseline.
Printed: wall time of the whole job (data loading included) and test accuracy.
Fashion scenes (segmentation, efficientnet-lite0 at 128 px): loradex's LoRA with the pyramid head
(stride 8/16/32) and with the last map only, a probe (frozen base) and full fine-tuning with the
same head and epochs (Trainer); val mIoU and pixel accuracy. The same scenes as detection (``boxes``,
a few thousand exact boxes): pretrained vs random-init efficientnet-lite0 (the same network, weights
drawn with seed 0), LoRA vs full fine-tuning, the random tiny-vit, the head with and without the
pyramid, and torchvision's FCOS + FPN on the frozen pretrained base as the anchor; val mAP@.5 and mAP. Trees: loradex
detection on both bases, mAP@.5 on the val tiles. Then the three efficientnet-lite0 adapters on
one base predicted together (each task's score, and the time against three separate models), and
the multi-task merge table (retained % of each task's score, on its own validation data).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import real_datasets  # noqa: E402
from work_folder import WorkFolder, open_work  # noqa: E402

BASES = ("efficientnet-lite0", "tiny-vit")
SIZES = {"fashion": {"efficientnet-lite0": 64, "tiny-vit": 32}, "digits": {"efficientnet-lite0": 64, "tiny-vit": 32},
         "scenes": {"efficientnet-lite0": 128},
         "trees": {"efficientnet-lite0": 384, "efficientnet-lite0-os16": 384, "tiny-vit": 384}}
TREE_RUNS = {"efficientnet-lite0": ("efficientnet-lite0", None, {}),
             "efficientnet-lite0 fcos": ("efficientnet-lite0", {"kind": "fcos"}, {}),
             "efficientnet-lite0 grid": ("efficientnet-lite0", {"levels": [], "upsample": 2}, {}),
             "efficientnet-lite0-os16 grid": ("efficientnet-lite0-os16", {"levels": [], "upsample": 2}, {}),
             "tiny-vit": ("tiny-vit", None, {}),
             "tiny-vit fcos": ("tiny-vit", {"kind": "fcos"}, {}),
             "tiny-vit fliplr 50ep": ("tiny-vit", None, {"flipud": 0.0, "rot90": 0.0, "epochs": 50}),
             "efficientnet-lite0 50ep": ("efficientnet-lite0", None, {"epochs": 50}),
             "efficientnet-lite0 fcos 50ep": ("efficientnet-lite0", {"kind": "fcos"}, {"epochs": 50})}
"""Row → (base, head override, training override over TREES). Trees are 20-40 px: the stride-32 grid (12x12
at 384 px) is too coarse. The default head on a CNN reads the stride-8/16 stages too (the pyramid); ``grid``
rows are the head before the pyramid (the last map only, upsampled twice); ``fcos`` rows the per-level head
(on tiny-vit over ViTDet's simple pyramid made from its one map); os16 is the same weights, dilated. os8 is
left out: 80 s an epoch on 2 cores (mAP@.5 0.084 after 10 of 30 epochs when it was stopped). ``50ep`` rows
train 50 epochs; ``fliplr`` is tiny-vit's best recipe (the left-right flip alone)."""
TREES = {"epochs": 30, "batch_size": 8, "patience": 8, "flipud": 0.5, "rot90": 0.5}
"""38 training tiles: detection's defaults (6 epochs over a thousand scenes) would see them 6 times. Seen
from above, a tile has no up: all eight orientations (flipud, rot90 and the default fliplr) are training
pictures. efficientnet-lite0: mAP@.5 0.482 (0.417 with the left-right flip alone, overfitting after epoch 9).
The random tiny-vit loses by it: 0.194, 30 epochs without early stopping too (0.414 with the left-right flip alone).
The per-level head (fcos) learns more slowly: level with the default head over 30 epochs, ahead over 50.
See README for the figures."""


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
                overrides: dict | None = None, head: dict | None = None) -> dict:
    """``adapters train`` in-process with the defaults for ``base``; the adapter is stored as ``name``."""
    from loradex.core.training import TrainRequest, train_adapter

    start = time.perf_counter()
    outcome = train_adapter(TrainRequest(task=task, data=str(root), backbone=base, project=work / "runs",
                                         run_name=name, train={"image_size": size, **(overrides or {})},
                                         head=dict(head or {})),
                            progress=False, say=lambda line: None)
    seconds = time.perf_counter() - start
    registry.put(outcome.artifact_dir, name=name, args={"data": str(root), "primary_metric": outcome.primary_metric})
    metrics = outcome.metrics
    lora, head = outcome.result.model.trainable_parameters()
    result = {"seconds": seconds, "spec": outcome.spec.to_dict(), "metrics": metrics,
              "trainable": sum(p.numel() for p in [*lora, *head])}
    key = ("test_accuracy" if "test_accuracy" in metrics else "accuracy" if task == "classification"
           else "map50" if task == "detection" else outcome.primary_metric)
    result["score"] = metrics.get(key, metrics.get(outcome.primary_metric))
    return result


def classification_part(dataset: str, root: Path, folder: WorkFolder) -> None:
    """The four ways to train, on both bases."""
    registry, work = folder.registry, folder.path
    print(f"\n{dataset}: {root}", flush=True)
    print(f"{'base':<20}{'method':<10}{'trainable':>11}{'seconds':>10}{'test acc':>10}", flush=True)
    for base in BASES:
        size = SIZES[dataset][base]
        name = f"{dataset}-{base}"
        ours = folder.measured(name, lambda: loradex_run("classification", base, root, size, registry, name, work))
        lora = ours["spec"]["lora"]
        trainable = f"{ours['trainable']:,}" if "trainable" in ours else "-"
        print(f"{base:<20}{'loradex':<10}{trainable:>11}{ours['seconds']:10.1f}{ours['score']:10.4f}", flush=True)
        for mode in ("probe", "full", "peft"):
            row = folder.measured(f"{name}-{mode}", lambda: trainer_run(
                mode, base, root, size, {"lora": lora, "train": ours["spec"]["train"]}, work))
            print(f"{base:<20}{mode:<10}{row['trainable']:>11,}{row['seconds']:10.1f}{row['accuracy']:10.4f}", flush=True)


def dense_trainer_run(task_name: str, mode: str, base: str, root: Path, spec: dict, work: Path) -> dict:
    """``probe`` (frozen base) or ``full`` (every base weight trained) with the same head as loradex's
    adapter (built by the task from ``spec``: same levels), the task's own loss, batching and metrics,
    trained by a plain transformers Trainer for the same epochs. Scored on the val split."""
    import torch
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from loradex.core import plugins
    from loradex.core.spec import AdapterSpec

    start = time.perf_counter()
    task = plugins.get_task(task_name)
    backbone = plugins.resolve_backbone(base).load(base)
    size = spec["image_size"]
    data = task.read_data(str(root), backbone=backbone, image_size=size, seed=0)
    encoder = backbone.model
    encoder.requires_grad_(mode == "full")

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = task.head_for(backbone, head_config=spec["head"], image_size=size)

        def train(self, mode_: bool = True):
            super().train(mode_)
            if mode_ and mode != "full":  # a frozen base keeps its batch-norm statistics, as loradex does
                self.encoder.eval()
            return self

        def forward(self, pixel_values, targets=None):
            outputs = self.head(backbone.encode(self.encoder, pixel_values))
            return {"outputs": outputs, **({"loss": task.loss(outputs, targets)} if targets is not None else {})}

    model = Model()
    train = spec["train"]
    lr = {"probe": train["head_lr"] or train["lr"], "full": 5e-4}[mode]
    steps = -(-len(data.train) // train["batch_size"]) * train["epochs"]
    args = TrainingArguments(output_dir=str(work / f"trainer-{task_name}-{mode}"),
                             per_device_train_batch_size=train["batch_size"], num_train_epochs=train["epochs"],
                             learning_rate=lr, weight_decay=train["weight_decay"],
                             warmup_steps=int(train["warmup_ratio"] * steps), lr_scheduler_type=train["scheduler"],
                             save_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, use_cpu=True, seed=0, remove_unused_columns=False)
    flips = task.augment(data.train, AdapterSpec.from_dict(spec).train, head_config=data.head_config)
    Trainer(model=model, args=args, train_dataset=flips, data_collator=task.collate).train()
    model.eval()
    metrics = task.metrics(spec["head"])
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data.val, batch_size=32, collate_fn=task.collate):
            metrics.update(model(pixel_values=batch["pixel_values"])["outputs"], batch["targets"])
    result = metrics.compute().metrics
    return {"metrics": result, "score": result[task.primary_metric], "seconds": time.perf_counter() - start,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def segmentation_part(root: Path, folder: WorkFolder) -> None:
    """Fashion scenes on efficientnet-lite0: loradex's LoRA with the pyramid head and with the last map
    only, against a probe (frozen base, same head) and full fine-tuning (same head), same epochs."""
    registry, work, report = folder.registry, folder.path, folder.report
    base, size = "efficientnet-lite0", SIZES["scenes"]["efficientnet-lite0"]
    print(f"\nfashion scenes (segmentation, val mIoU): {root}", flush=True)
    print(f"{'base':<20}{'method':<16}{'trainable':>11}{'seconds':>10}{'mIoU':>8}{'pixel acc':>11}", flush=True)
    runs = {"loradex": {}, "loradex-grid": {"levels": []}}
    for method, head in runs.items():
        name = f"scenes-{base}" + ("" if method == "loradex" else "-grid")
        row = folder.measured(name,
                       lambda: loradex_run("segmentation", base, root, size, registry, name, work, head=head))
        print(f"{base:<20}{method:<16}{row['trainable']:>11,}{row['seconds']:10.1f}{row['score']:8.4f}"
              f"{row['metrics']['pixel_accuracy']:11.4f}", flush=True)
    spec = report[f"scenes-{base}"]["spec"]
    for mode in ("probe", "full"):
        row = folder.measured(f"scenes-{base}-{mode}",
                       lambda: dense_trainer_run("segmentation", mode, base, root, spec, work))
        print(f"{base:<20}{mode:<16}{row['trainable']:>11,}{row['seconds']:10.1f}{row['score']:8.4f}"
              f"{row['metrics']['pixel_accuracy']:11.4f}", flush=True)


def random_lite0(work: Path) -> str:
    """A folder holding efficientnet-lite0's architecture, processor and config with freshly drawn
    weights (seed 0): the same network as the preset without what ImageNet taught it."""
    import torch
    from transformers import TimmWrapperModel

    from loradex.core import plugins

    folder = work / "efficientnet-lite0-random"
    if not (folder / "model.safetensors").is_file():
        preset = plugins.resolve_backbone("efficientnet-lite0").load("efficientnet-lite0")
        torch.manual_seed(0)
        TimmWrapperModel(preset.model.config).save_pretrained(folder, safe_serialization=True)
        preset.processor.save_pretrained(folder)
    return str(folder)


def fcos_run(base: str, root: Path, size: int, epochs: int, work: Path) -> dict:
    """The anchor: torchvision's FCOS (its own centre sampling, GIoU loss, focal loss and NMS) with a
    feature pyramid network on the frozen base's stride-8/16/32 maps; FPN and head trained with AdamW
    for ``epochs``, the same images and size; scored by the same COCO evaluation on the val split."""
    from collections import OrderedDict

    import torch
    from torch import nn
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

    from loradex.core import plugins
    from loradex.core.metrics import coco_evaluate
    from loradex.core.spec import TrainSettings

    start = time.perf_counter()
    torch.manual_seed(0)
    task = plugins.get_task("detection")
    backbone = plugins.resolve_backbone(base).load(base)
    data = task.read_data(str(root), backbone=backbone, image_size=size, seed=0)
    labels = data.head_config["labels"]
    widths = {**backbone.feature_levels, backbone.patch_size: backbone.hidden_size}

    class Pyramid(nn.Module):
        out_channels = 64

        def __init__(self) -> None:
            super().__init__()
            self.fpn = FeaturePyramidNetwork([widths[s] for s in sorted(widths)], self.out_channels)

        def forward(self, pixels):
            with torch.no_grad():
                features = backbone.encode(backbone.model, pixels)
            maps = {**features.levels, backbone.patch_size: features.patches}
            return self.fpn(OrderedDict((str(s), maps[s].permute(0, 3, 1, 2)) for s in sorted(maps)))

    strides = sorted(widths)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in strides), aspect_ratios=((1.0,),) * len(strides))  # FCOS: size = stride
    model = FCOS(Pyramid(), num_classes=len(labels) + 1, min_size=size, max_size=size, image_mean=[0.0] * 3,
                 image_std=[1.0] * 3, anchor_generator=anchors, score_thresh=0.05, detections_per_img=100)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=1e-4)
    flips = task.augment(data.train, TrainSettings(), head_config=data.head_config)
    batches = torch.utils.data.DataLoader(flips, batch_size=16, shuffle=True, collate_fn=task.collate,
                                          generator=torch.Generator().manual_seed(0))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=epochs * len(batches))

    def targets_of(batch):
        return [{"boxes": t["boxes"] * size, "labels": t["labels"] + 1} for t in batch["targets"]]

    for _ in range(epochs):
        model.train()
        backbone.model.eval()
        for batch in batches:
            losses = model(list(batch["pixel_values"]), targets_of(batch))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    truth, predicted = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data.val, batch_size=32, collate_fn=task.collate):
            for found, target in zip(model(list(batch["pixel_values"])), batch["targets"]):
                width, height = (float(v) for v in target["size"])
                scale = torch.tensor([width, height, width, height])
                truth.append(((target["boxes"] * scale).numpy(), target["labels"].numpy(), (width, height)))
                predicted.append(((found["boxes"] / size * scale).numpy(), found["scores"].numpy(),
                                  (found["labels"] - 1).numpy()))
    result = coco_evaluate(labels, truth, predicted).metrics
    return {"metrics": result, "score": result["map50"], "seconds": time.perf_counter() - start,
            "trainable": sum(p.numel() for p in trainable)}


def scenes_detection_part(root: Path, folder: WorkFolder) -> None:
    """Fashion scenes as detection (a few thousand exact boxes): pretrained vs random efficientnet-lite0,
    LoRA vs full fine-tuning, the random tiny-vit, and torchvision's FCOS as the anchor; val mAP."""
    registry, work, report = folder.registry, folder.path, folder.report
    size = SIZES["scenes"]["efficientnet-lite0"]
    random = random_lite0(work)
    print(f"\nfashion scenes (detection, val): {root}", flush=True)
    print(f"{'base':<24}{'method':<20}{'trainable':>11}{'seconds':>10}{'mAP@.5':>9}{'mAP':>8}", flush=True)
    rows = {("efficientnet-lite0", "loradex"): ("efficientnet-lite0", None),
            ("efficientnet-lite0", "loradex grid"): ("efficientnet-lite0", {"levels": [], "upsample": 2}),
            ("efficientnet-lite0", "loradex fcos"): ("efficientnet-lite0", {"kind": "fcos"}),
            ("lite0 random init", "loradex"): (random, None),
            ("tiny-vit (random)", "loradex"): ("tiny-vit", None)}
    for (label, method), (base, head) in rows.items():
        name = "boxes-" + "-".join((label + " " + method).replace("(", "").replace(")", "").split())
        row = folder.measured(name,
                       lambda: loradex_run("detection", base, root, size, registry, name, work, head=head))
        print(f"{label:<24}{method:<20}{row['trainable']:>11,}{row['seconds']:10.1f}{row['score']:9.4f}"
              f"{row['metrics'].get('map', 0):8.4f}", flush=True)
    spec = report["boxes-efficientnet-lite0-loradex"]["spec"]
    for label, base, mode in (("efficientnet-lite0", "efficientnet-lite0", "full"),
                              ("lite0 random init", random, "full")):
        row = folder.measured("boxes-" + "-".join(label.split()) + f"-{mode}",
                       lambda: dense_trainer_run("detection", mode, base, root, spec, work))
        print(f"{label:<24}{mode:<20}{row['trainable']:>11,}{row['seconds']:10.1f}{row['score']:9.4f}"
              f"{row['metrics'].get('map', 0):8.4f}", flush=True)
    row = folder.measured("boxes-fcos",
                   lambda: fcos_run("efficientnet-lite0", root, size, spec["train"]["epochs"], work))
    print(f"{'efficientnet-lite0':<24}{'torchvision FCOS':<20}{row['trainable']:>11,}{row['seconds']:10.1f}"
          f"{row['score']:9.4f}{row['metrics'].get('map', 0):8.4f}", flush=True)


def trees_part(root: Path, folder: WorkFolder) -> None:
    """Detection from VOC XML on both bases, with and without the pyramid: mAP@.5 on the val tiles."""
    registry, work = folder.registry, folder.path
    print(f"\ntrees: {root}", flush=True)
    print(f"{'base / head':<32}{'seconds':>10}{'mAP@.5':>9}{'mAP':>8}", flush=True)
    for row_name, (base, head, train) in TREE_RUNS.items():
        name = "trees-" + row_name.replace(" ", "-")
        row = folder.measured(name, lambda: loradex_run("detection", base, root, SIZES["trees"][base], registry,
                                                               name, work, {**TREES, **train}, head=head))
        print(f"{row_name:<32}{row['seconds']:10.1f}{row['metrics'].get('map50', 0):9.4f}"
              f"{row['metrics'].get('map', 0):8.4f}", flush=True)
    folder.save()


def multitask_part(roots: dict[str, Path], folder: WorkFolder) -> None:
    """Fashion + digits + trees on one efficientnet-lite0: each task's score, and time against separate models."""
    registry, report = folder.registry, folder.report
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
    folder.save()


def merge_part(folder: WorkFolder) -> None:
    """Merge the three efficientnet-lite0 adapters with each method: retained % per task."""
    registry, report = folder.registry, folder.report
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
    folder.save()


def main() -> None:
    parts, folder = open_work(__doc__.splitlines()[0], default="bench-results/real_data",
                              parts="fashion,digits,scenes,boxes,trees,multitask,merge", report="real_data.json")
    work = folder.path
    writers = {"fashion": real_datasets.write_fashion, "digits": real_datasets.write_digits,
               "trees": real_datasets.write_trees}
    needed = set(writers) if "multitask" in parts or "merge" in parts else set(parts) & set(writers)
    roots = {name: writers[name](work / "data" / name) for name in writers if name in needed}
    for dataset in ("fashion", "digits"):
        if dataset in parts:
            classification_part(dataset, roots[dataset], folder)
    if "scenes" in parts:
        segmentation_part(real_datasets.write_fashion_scenes(work / "data" / "scenes"), folder)
    if "boxes" in parts:
        scenes_detection_part(real_datasets.write_fashion_scenes(work / "data" / "scenes"), folder)
    if "trees" in parts:
        trees_part(roots["trees"], folder)
    if "multitask" in parts:
        multitask_part(roots, folder)
    if "merge" in parts:
        merge_part(folder)


if __name__ == "__main__":
    main()
