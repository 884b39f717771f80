"""Images per second of the data path, training and prediction: memory vs PNG vs JPEG folders.

    uv run python bench/data_throughput.py [--work DIR] [--images 2000] [--parts data,train,vit-base,predict]

Sources, each with ``--images`` images at 224 px (the default):
- ``memory``: tensors already transformed (what synthetic data is): the ceiling;
- ``png``: scikit-learn's digits as small PNG files (8x8 scans upscaled to 32x32);
- ``jpeg``: full-size photos: scikit-image's sample photos, cropped, flipped and resized at random
  to 1024x768, re-encoded as JPEG (quality 90).

(a) data path alone: a DataLoader over the folder, batch 32, nothing else running; ``before``
    is the path as it was (PIL decode, then the transformers processor, one image per call, in
    the training process); ``now`` is the fast transform (PIL resize + torch normalise, reduced-
    scale JPEG decoding), for 0, 1, 2, ... worker processes up to the core count, and from a RAM cache.
(b) training (``train``): one epoch of ``adapters train classification`` on tiny-vit (LoRA r=16 on
    every projection) at 224 px from each source, for each ``--workers`` count and the RAM cache,
    with the PEFT + Trainer script (same base, LoRA, batch, images, precision) side by side. The
    rate is of the training steps (data loading included, the validation pass not), which is what
    the Trainer script times too. ``vit-base``: the same from the JPEG folder on vit-base.
    On a GPU each figure carries the mean GPU utilisation (``nvidia-smi``, every 0.2 s).
(c) prediction: ``model.predict(folder)`` images/s with 0 and 2 decoding threads.
(d) ``compile`` (not in the default parts): ``train.compile`` against eager, once compiled, and
    what compiling costs.

Run it alone: two torch processes on two cores slow each other ten-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT reads a deprecated transformers attribute

SIZE = 224


def write_png(root: Path, count: int) -> Path:
    """Digits upscaled to 32x32 PNGs in ``root/CLASS/`` (cycled to ``count`` files)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if (root / ".complete").is_file():
        return root
    digits = load_digits()
    for index in range(count):
        pixels = (digits.images[index % len(digits.images)] * 255 / 16).astype(np.uint8)
        folder = root / str(digits.target[index % len(digits.images)])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((32, 32)).save(folder / f"{index:05d}.png")
    (root / ".complete").touch()
    return root


def write_jpeg(root: Path, count: int) -> Path:
    """Random crops of scikit-image's photos, resized to 1024x768 JPEGs in ``root/PHOTO/``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    if (root / ".complete").is_file():
        return root
    photos = {name: Image.fromarray(getattr(data, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry")}
    rng = np.random.default_rng(0)
    names = sorted(photos)
    for index in range(count):
        name = names[index % len(names)]
        photo = photos[name]
        width, height = photo.size
        w, h = int(width * rng.uniform(0.6, 1)), int(height * rng.uniform(0.6, 1))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        image = photo.crop((left, top, left + w, top + h)).resize((1024, 768), Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:05d}.jpg", quality=90)
    (root / ".complete").touch()
    return root


class BeforeDataset:
    """The data path as it was: decode in full, then the transformers processor on one image."""

    def __init__(self, paths, backbone) -> None:
        self.paths, self.backbone = paths, backbone

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        from loradex.core.data import open_image

        return self.backbone._processed(open_image(self.paths[index])), 0


def data_rate(dataset, workers: int, batches: int | None = None) -> float:
    """Images/s of iterating ``dataset`` in batches of 32 through loradex's loader (first batch excluded)."""
    from loradex.core.data.loading import checked_batches, make_loader

    loader = make_loader(dataset, batch_size=32, collate=None, workers=workers)
    count, start = 0, None
    for index, (pixels, _) in enumerate(checked_batches(loader)):
        if index == 0:
            start = time.perf_counter()  # after the workers have started
            continue
        count += pixels.shape[0]
        if batches is not None and index >= batches:
            break
    return count / (time.perf_counter() - start)


def data_part(sources: dict[str, Path], report: dict, workers: list[int]) -> None:
    """(a): the data path alone, for each worker count in ``workers``."""
    from loradex.core import plugins
    from loradex.core.data import ImageDataset
    from loradex.core.data.loading import ImageCache

    backbone = plugins.resolve_backbone("vit-base").load("vit-base")  # its processor: 224 px, the ViT-B default
    fast = backbone.transform_at(SIZE)
    print(f"\n(a) data path alone, {SIZE} px, batch 32 (images/s)", flush=True)
    print(f"{'source':<8}{'before w0':>11}" + "".join(f"{f'now w{n}':>9}" for n in workers)
          + f"{'ram cache':>11}{'w2/before':>11}")
    for name, root in sources.items():
        paths = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
        row = {"before_w0": data_rate(BeforeDataset(paths, backbone), 0)}
        for count in workers:
            row[f"now_w{count}"] = data_rate(ImageDataset(paths, [0] * len(paths), fast), count)
        cached = ImageDataset(paths, [0] * len(paths), fast)
        cache = ImageCache(paths, fast, kind="ram")
        fill = time.perf_counter()
        cache.fill(say=lambda line: None)
        row["cache_fill_s"] = time.perf_counter() - fill
        cached.cache = cache
        row["ram_cache"] = data_rate(cached, 0)
        row["speedup_w2"] = row["now_w2"] / row["before_w0"]
        report.setdefault("data", {})[name] = row
        print(f"{name:<8}{row['before_w0']:11.0f}" + "".join(f"{row[f'now_w{n}']:9.0f}" for n in workers)
              + f"{row['ram_cache']:11.0f}{row['speedup_w2']:10.2f}x   (cache filled in {row['cache_fill_s']:.1f} s)",
              flush=True)


class GpuUtilisation:
    """Mean GPU utilisation (%) while a block runs, sampled from ``nvidia-smi`` every 0.2 s; None without a GPU."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.mean: float | None = None
        self._stop = None

    def __enter__(self) -> "GpuUtilisation":
        import shutil
        import threading

        import torch

        if torch.cuda.is_available() and shutil.which("nvidia-smi"):
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import subprocess

        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if out and out[0].isdigit():
                self.samples.append(float(out[0]))

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self.mean = statistics.mean(self.samples) if self.samples else None


def train_rate(backbone_name: str, data: str, *, images: int, extra: dict, work: Path, name: str) -> tuple[float, float | None]:
    """Images/s of one epoch of loradex's training steps (validation excluded), and the mean GPU utilisation."""
    from loradex.core.training import TrainRequest, train_adapter

    request = TrainRequest(task="classification", data=data, backbone=backbone_name, project=work / "runs",
                           run_name=name, lora={"rank": 16, "targets": "all"},
                           train={"epochs": 1, "batch_size": 32, "image_size": SIZE, "max_train_samples": images,
                                  **extra})
    with GpuUtilisation() as gpu:
        outcome = train_adapter(request, progress=False, say=lambda line: None)
    return outcome.result.images_per_second, gpu.mean


def trainer_rate(backbone_name: str, root: Path, *, images: int, workers: int) -> tuple[float, float | None]:
    """Images/s of the same LoRA with a plain PEFT + transformers Trainer script, from the same folder.

    On a GPU it uses what loradex uses there: bf16 autocast (fp16 where bf16 is missing), pinned memory.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from loradex.core import plugins
    from loradex.core.data import image_folder

    backbone = plugins.resolve_backbone(backbone_name).load(backbone_name)
    processor = backbone.image_processor
    from loradex.core.data.datasets import take

    items = list(take(image_folder(root, seed=0).splits["train"], images, seed=0))  # the images loradex trains on
    labels = sorted({t for _, t in items})

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, index):
            from PIL import Image

            path, label = items[index]
            with Image.open(path) as image:  # the processor itself, told the size (224 px, like loradex's run)
                pixels = processor(images=image.convert("RGB"), size={"height": SIZE, "width": SIZE},
                                   return_tensors="pt")["pixel_values"][0]
            return {"pixel_values": pixels, "labels": label}

    encoder = get_peft_model(backbone.model, LoraConfig(r=16, lora_alpha=32,
                                                        target_modules=backbone.target_modules(
                                                            ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.in",
                                                             "mlp.out"])))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, nn.Linear(backbone.hidden_size, len(labels))

        def forward(self, pixel_values, labels=None):
            tokens = encoder(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
            logits = self.head(tokens[:, 0])
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    args = TrainingArguments(output_dir="/tmp/loradex-bench-trainer", per_device_train_batch_size=32,
                             num_train_epochs=1, save_strategy="no", report_to=[], logging_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=workers, use_cpu=not cuda, seed=0,
                             bf16=bf16, fp16=cuda and not bf16, dataloader_pin_memory=cuda)
    with GpuUtilisation() as gpu:
        start = time.perf_counter()
        Trainer(model=Classifier(), args=args, train_dataset=Files()).train()
        rate = len(items) / (time.perf_counter() - start)
    return rate, gpu.mean


def split_folder(root: Path, work: Path, name: str) -> Path:
    """Hard links of ``root``'s files as an ImageFolder with train/ and a 5% val/ (the engine needs one)."""
    split = work / f"{name}-split"
    if not split.exists():
        for index, path in enumerate(sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))):
            target = split / ("val" if index % 20 == 0 else "train") / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return split


def _rate(value: float, gpu: float | None) -> str:
    return f"{value:7.1f}" + (f" ({gpu:3.0f}% GPU)" if gpu is not None else "")


def train_part(backbone_name: str, sources: dict[str, Path], report: dict, work: Path, images: int,
               workers: list[int]) -> None:
    """(b): training from memory and from folders, loradex and PEFT + Trainer, for one base."""
    print(f"\n(b) training, {backbone_name} LoRA r=16 all projections, {SIZE} px, batch 32, {images} images "
          f"(images/s of the training steps)", flush=True)
    rows: dict = {}
    # discarded: the process's first training steps pay one-off kernel and allocator set-up, which with
    # a few steps per run (vit-base on a CPU) would count against whichever source came first
    train_rate(backbone_name, "synthetic:train=32,val=8,test=0", images=32, extra={"workers": 0}, work=work,
               name=f"{backbone_name}-warm-up")
    memory, gpu = train_rate(backbone_name, f"synthetic:train={images},val=30,test=0", images=images,
                             extra={"workers": 0}, work=work, name=f"{backbone_name}-memory")
    rows["memory"], rows["memory_gpu"] = memory, gpu
    print(f"{'memory':<8} loradex w0 {_rate(memory, gpu)}", flush=True)
    for name, root in sources.items():
        split = split_folder(root, work, name)
        runs = [(f"w{count}", {"workers": count}) for count in workers] + [("ram", {"workers": 0, "cache": "ram"})]
        for label, extra in runs:
            rows[f"{name}_{label}"], rows[f"{name}_{label}_gpu"] = train_rate(
                backbone_name, str(split), images=images, extra=extra, work=work, name=f"{backbone_name}-{name}-{label}")
        for count in workers:
            rows[f"{name}_trainer_w{count}"], rows[f"{name}_trainer_w{count}_gpu"] = trainer_rate(
                backbone_name, split, images=images, workers=count)
        ours = max(rows[f"{name}_{label}"] for label, _ in runs)
        theirs = max(rows[f"{name}_trainer_w{count}"] for count in workers)
        print(f"{name:<8} loradex " + "  ".join(f"{label} {_rate(rows[f'{name}_{label}'], rows[f'{name}_{label}_gpu'])}"
                                               for label, _ in runs), flush=True)
        print(f"{'':<8} Trainer " + "  ".join(
            f"w{count} {_rate(rows[f'{name}_trainer_w{count}'], rows[f'{name}_trainer_w{count}_gpu'])}"
            for count in workers), flush=True)
        print(f"{'':<8} best/memory {ours / memory:.2f}x   best/Trainer-best {ours / theirs:.2f}x", flush=True)
    report.setdefault("train", {})[backbone_name] = rows


def compile_part(report: dict, work: Path, images: int) -> None:
    """(d): ``train.compile`` against eager: three epochs from memory, the last epoch's training steps timed."""
    from loradex.core.training import TrainRequest, train_adapter

    print(f"\n(d) torch.compile against eager, tiny-vit LoRA r=16, {SIZE} px, batch 32, {images} images, 3 epochs",
          flush=True)
    rows = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        request = TrainRequest(task="classification", data=f"synthetic:train={images},val=32,test=0",
                               backbone="tiny-vit", project=work / "runs", run_name=f"compile-{label}",
                               lora={"rank": 16, "targets": "all"},
                               train={"epochs": 3, "batch_size": 32, "image_size": SIZE, "patience": None,
                                      "workers": 0, "compile": compiled})
        try:
            history = train_adapter(request, progress=False, say=lambda line: None).result.history
        except Exception as exc:  # noqa: BLE001 - a compiler missing on this machine is a result too
            print(f"{label:<9} failed: {str(exc).splitlines()[0][:200]}", flush=True)
            return
        rows[label] = {"first_epoch_s": history[0].train_seconds, "last_epoch_rate": images / history[-1].train_seconds}
        print(f"{label:<9} first epoch {history[0].train_seconds:6.1f} s   last epoch {rows[label]['last_epoch_rate']:6.1f} "
              f"images/s", flush=True)
    print(f"compiled/eager {rows['compiled']['last_epoch_rate'] / rows['eager']['last_epoch_rate']:.2f}x once compiled; "
          f"compiling cost {rows['compiled']['first_epoch_s'] - rows['eager']['first_epoch_s']:.1f} s", flush=True)
    report["compile"] = rows


def predict_part(sources: dict[str, Path], report: dict, work: Path) -> None:
    """(c): ``predict`` over a folder with and without decoding threads."""
    from loradex.core import plugins
    from loradex.core.multitask import MultiTaskModel

    folder = next(iter((work / "runs" / "classification").glob("tiny-vit-jpeg-w0*/adapter")), None)
    if folder is None:
        print("(c) skipped: run the train part first (it trains the adapter predicted with)", flush=True)
        return
    model = MultiTaskModel(plugins.resolve_backbone("tiny-vit").load("tiny-vit"))
    model.attach("jpeg@v1", folder)
    rows = {}
    print(f"\n(c) prediction, tiny-vit at {SIZE} px, batch 32 (images/s)", flush=True)
    for name in ("png", "jpeg"):
        for workers in (0, 2):
            rates = []
            for _ in range(2):
                start = time.perf_counter()
                count = sum(1 for _ in model.stream(sources[name], workers=workers, batch_size=32))
                rates.append(count / (time.perf_counter() - start))
            rows[f"{name}_w{workers}"] = statistics.median(rates)
        print(f"{name:<8} threads 0 {rows[f'{name}_w0']:7.1f}   threads 2 {rows[f'{name}_w2']:7.1f}  "
              f"({rows[f'{name}_w2'] / rows[f'{name}_w0']:.2f}x)", flush=True)
    report["predict"] = rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-results/data_throughput"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--train-images", type=int, default=640)
    parser.add_argument("--vit-base-images", type=int, default=None,
                        help="images for the vit-base training comparison (default: 96 on a CPU, 2048 on a GPU)")
    parser.add_argument("--workers", default=None,
                        help="worker counts to compare, e.g. 0,2 (default: 0,2 on a CPU, 0,4,8 on a GPU)")
    parser.add_argument("--parts", default="data,train,vit-base,predict")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORADEX_HOME", str(work / "home"))
    sources = {"png": write_png(work / "png", args.images), "jpeg": write_jpeg(work / "jpeg", args.images)}
    report: dict = {"images": args.images, "cpus": os.cpu_count()}
    parts = args.parts.split(",")
    import torch

    cuda = torch.cuda.is_available()
    workers = [int(n) for n in (args.workers or ("0,4,8" if cuda else "0,2")).split(",")]
    report["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    if "data" in parts:
        data_part(sources, report, sorted({0, 1, 2, *workers, os.cpu_count() or 1}))
    if "train" in parts:
        train_part("tiny-vit", sources, report, work, args.train_images, workers)
    if "vit-base" in parts:
        train_part("vit-base", {"jpeg": sources["jpeg"]}, report, work,
                   args.vit_base_images or (2048 if cuda else 96), workers)
    if "predict" in parts:
        predict_part(sources, report, work)
    if "compile" in parts:
        compile_part(report, work, args.train_images)
    (work / "data_throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
