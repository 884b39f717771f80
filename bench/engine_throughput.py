"""Training throughput: the loradex engine vs a plain PEFT + transformers Trainer script.

    uv run python bench/engine_throughput.py [--images 640] [--epochs 2]

Both train the same LoRA (r=16 on q and v) on the same 192x6 ViT at 32 px with a linear head
on the CLS token, batch 32, on the same in-memory images, one after the other in this
process. Printed: images/s of each and the ratio loradex / Trainer (> 1 means faster). The
loradex figure includes its per-epoch validation pass (on 32 images); the Trainer's has none.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CONFIG = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768,
              image_size=32, patch_size=4)


def make_data(count: int, seed: int = 0):
    """Shapes at 32 px as tensors, with labels."""
    import numpy as np
    import torch

    from loradex.plugins.shapes import single_shape_image

    images = [single_shape_image(seed, i, 32, i % 5) for i in range(count)]
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images])
    return pixels, torch.tensor([i % 5 for i in range(count)])


def trainer_baseline(pixels, labels, epochs: int) -> float:
    """Images/s of a hand-written PEFT + Trainer script."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTModel

    torch.manual_seed(0)
    encoder = get_peft_model(ViTModel(ViTConfig(**CONFIG), add_pooling_layer=False),
                             LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(CONFIG["hidden_size"], 5)

        def forward(self, pixel_values, labels=None):
            logits = self.head(self.encoder(pixel_values=pixel_values).last_hidden_state[:, 0])
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    dataset = [{"pixel_values": p, "labels": l} for p, l in zip(pixels, labels)]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, num_train_epochs=epochs,
                                 learning_rate=1e-3, logging_strategy="no", save_strategy="no", report_to=[],
                                 use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=Classifier(), args=args, train_dataset=dataset)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return len(dataset) * epochs / seconds


def loradex_engine(pixels, labels, epochs: int) -> float:
    """Images/s of loradex.core.engine.train on the same work."""
    from loradex.core import engine
    from loradex.core.data import TensorListDataset
    from loradex.core.spec import AdapterSpec, LoraSettings, TrainSettings
    from loradex.core.task import TaskData
    from loradex.plugins.backbones.presets import PresetBackbone
    from loradex.plugins.classification.task import ClassificationTask

    backbone = PresetBackbone(name="bench-vit", description="", config=CONFIG).load()
    task = ClassificationTask()
    data = TaskData(train=TensorListDataset(list(pixels), labels.tolist()),
                    val=TensorListDataset(list(pixels[:32]), labels[:32].tolist()),
                    head_config={"labels": ["a", "b", "c", "d", "e"], "pooling": "cls"})
    spec = AdapterSpec(
        task="classification", backbone=backbone.ref, head=data.head_config, image_size=32,
        lora=LoraSettings(rank=16, alpha=32, targets=("attn.q", "attn.v"),
                          target_modules=backbone.target_modules(("attn.q", "attn.v"))),
        train=TrainSettings(epochs=epochs, batch_size=32, lr=1e-3, patience=None),
    )
    result = engine.train(task, backbone, spec, data, progress=False)
    return len(pixels) * epochs / result.seconds


def main() -> None:
    """Run both, print images/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the median is compared")
    args = parser.parse_args()
    pixels, labels = make_data(args.images)
    trainer_baseline(pixels[:64], labels[:64], 1)  # warm both code paths up once
    loradex_engine(pixels[:64], labels[:64], 1)
    baseline, ours = [], []
    for round_ in range(1, args.rounds + 1):
        baseline.append(trainer_baseline(pixels, labels, args.epochs))
        ours.append(loradex_engine(pixels, labels, args.epochs))
        print(f"round {round_}: Trainer {baseline[-1]:6.1f} images/s, loradex {ours[-1]:6.1f} images/s", flush=True)
    b, o = statistics.median(baseline), statistics.median(ours)
    print(f"PEFT + Trainer : {b:7.1f} images/s (median of {args.rounds})")
    print(f"loradex engine : {o:7.1f} images/s (median of {args.rounds}, including validation)")
    print(f"ratio loradex / Trainer: {o / b:.2f}x")


if __name__ == "__main__":
    main()
