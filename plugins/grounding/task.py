"""The ``grounding`` task: Florence-2 reads an image and a prompt and WRITES boxes, captions and phrases.

One adapter learns the three kinds of records in the data (``<OD>`` detection as text, dense
region captions, phrase grounding); the training order of the kinds is ``--mix``. The task owns
its forward pass (the language model's loss on the answer text) and its generation; its "head"
is the base's own language-model head, so the adapter is the LoRA alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradex.core.errors import ConfigError
from loradex.core.spec import LoraSettings, TrainSettings
from loradex.core.task import EvalResult, ImageTransform, Task, TaskData, option_help

from .data import OD, PHRASE, REGION


@dataclass(frozen=True)
class GroundingOptions:
    """Prediction options of the grounding task."""

    prompt: str = option_help(f"The task: {OD} (objects), {REGION} (region captions) or {PHRASE} (with text).", OD)
    text: str = option_help(f"The phrase to ground (e.g. 'the red circle'); implies prompt {PHRASE}.", "")
    max_new_tokens: int = option_help("Longest answer generated, in tokens.", 128)
    min_score: float = option_help("Leave out boxes whose location tokens score below this (0..1).", 0.0)

    def __post_init__(self) -> None:
        if self.text.strip() and self.prompt == OD:  # a phrase given with the default prompt: ground it
            object.__setattr__(self, "prompt", PHRASE)
        if self.prompt not in (OD, REGION, PHRASE):
            raise ConfigError(f"prompt must be {OD}, {REGION} or {PHRASE}, got {self.prompt!r}")
        if self.prompt == PHRASE and not self.text.strip():
            raise ConfigError(f"{PHRASE} needs the phrase to ground: -o text='the red circle'")
        if self.text.strip() and self.prompt != PHRASE:
            raise ConfigError(f"text is the phrase of {PHRASE}; prompt {self.prompt} takes none")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_score <= 1:
            raise ConfigError(f"min_score must be in [0, 1], got {self.min_score}")


class GroundingTask(Task):
    """Detection as text, region captions and phrase grounding on a Florence-2 base."""

    name = "grounding"
    description = "Florence-2: detection as text, region captions, phrase grounding (JSONL, COCO, YOLO, synthetic)"
    formats = ("jsonl", "coco", "yolo", "synthetic")
    primary_metric = "map50"
    requires = "encoder-decoder"
    predict_options = GroundingOptions

    def default_lora(self) -> LoraSettings:
        """r=16, alpha = 2r (what the reference system found best) on q, k, v of the language model and the
        vision tower's attention."""
        return LoraSettings(rank=16, alpha=32, targets=("attn.q", "attn.k", "attn.v", "vision.attn"))

    def default_train(self, backbone: str) -> TrainSettings:
        """Measured on the tiny-florence2 preset and the synthetic scenes (see GroundingTask's notes)."""
        return TrainSettings(epochs=8, batch_size=16, lr=3e-3, warmup_ratio=0.05, patience=4)

    def load_data(self, source: str | None, *, transform: ImageTransform, image_size: int, seed: int = 0) -> TaskData:
        """JSONL (Florence-2's prefix/suffix/image records), COCO, YOLO or ``synthetic[:...]``."""
        from .data import load_grounding_data

        return load_grounding_data(source, transform=transform, image_size=image_size, seed=seed)

    def check_data(self, data: TaskData, backbone: Any) -> None:
        """Every record's prompt and answer fit the base's positions (checked before any pass runs)."""
        from .prompts import check_record_lengths, max_positions

        limit = max_positions(backbone.model)
        for split in (data.train, data.val, data.test):
            check_record_lengths(backbone.processor, getattr(split, "records", ()), limit)

    def train_sampler(self, dataset: Any, settings: TrainSettings) -> Any:
        """``--mix interleave`` (all kinds shuffled together) or ``sequential`` (OD, regions, phrases in turn)."""
        from .data import MixSampler

        kinds = dataset.kinds() if hasattr(dataset, "kinds") else None
        return MixSampler(kinds, mix=settings.mix, seed=settings.seed) if kinds else None

    def build_head(self, *, hidden_size: int, grid_size: tuple[int, int], head_config: Mapping[str, Any]):
        """No head of its own: the answer comes from the base's language-model head."""
        from torch import nn

        return nn.Identity()

    def loss(self, outputs: Any, targets: Any):
        """The language model's cross-entropy on the answer tokens (computed in :meth:`step`)."""
        return outputs.loss

    def step(self, model: Any, batch: Mapping[str, Any], *, adapter: str | None = None):
        """Teacher-forced pass: prompts and image in, the answer text as labels."""
        from .prompts import label_ids, max_positions, prompt_inputs

        processor = model.backbone.processor
        limit = max_positions(model.backbone.model)
        pixels = batch["pixel_values"]
        targets = batch["targets"]
        inputs = prompt_inputs(processor, [t["prefix"] for t in targets], pixels.device, limit=limit)
        labels = label_ids(processor, [t["suffix"] for t in targets], pixels.device, limit=limit)
        outputs = model.runner(adapter)(**inputs, pixel_values=pixels, labels=labels)
        return outputs.loss, outputs

    def validate(self, model: Any, batch: Mapping[str, Any], *, adapter: str | None = None):
        """The teacher-forced loss, and the answers generated for each record's own prompt."""
        loss, _ = self.step(model, batch, adapter=adapter)
        targets = batch["targets"]
        generated = self.generate(model.runner(adapter), model.backbone, batch["pixel_values"], {},
                                  prompts=[t["prefix"] for t in targets], max_new_tokens=96)
        objects = [[(label, _pixels(bins, t["size"]), score) for label, bins, score in found]
                   for found, t in zip(generated["objects"], targets)]
        return loss, {"objects": objects, "texts": generated["texts"]}

    def generate(self, runner: Any, backbone: Any, pixel_values: Any, head_config: Mapping[str, Any], *,
                 prompt: str = OD, text: str = "", max_new_tokens: int = 128, min_score: float = 0.0,
                 prompts: Sequence[str] | None = None) -> dict[str, Any]:
        """Greedy generation: the answer texts, and per image (label, bins, score) of each box."""
        import torch

        from .prompts import max_positions, prompt_inputs

        processor = backbone.processor
        prefixes = list(prompts) if prompts is not None else [prompt + text] * pixel_values.shape[0]
        inputs = prompt_inputs(processor, prefixes, pixel_values.device, limit=max_positions(backbone.model))
        out = runner.generate(**inputs, pixel_values=pixel_values, max_new_tokens=max_new_tokens, num_beams=1,
                              do_sample=False, output_scores=True, return_dict_in_generate=True)
        steps = torch.stack([s.float().softmax(-1) for s in out.scores], dim=1) if out.scores else None
        tokenizer = processor.tokenizer
        texts, objects = [], []
        for row, sequence in enumerate(out.sequences):
            generated = sequence[-len(out.scores):] if out.scores else sequence[:0]
            probs = [float(steps[row, i, t]) for i, t in enumerate(generated.tolist())] if steps is not None else []
            texts.append(tokenizer.decode(generated, skip_special_tokens=False).replace("</s>", "").replace("<pad>", ""))
            objects.append([o for o in parse_tokens(generated.tolist(), probs, tokenizer) if o[2] >= min_score])
        return {"texts": texts, "objects": objects, "prompts": prefixes}

    def metrics(self, head_config: Mapping[str, Any]):
        """COCO mAP of OD records, grounding accuracy at IoU .5, BLEU-2 of region captions."""
        from .metrics import GroundingMetrics

        return GroundingMetrics(head_config.get("labels", []))

    def postprocess(self, outputs: Any, head_config: Mapping[str, Any], *, image_sizes: Sequence[tuple[int, int]],
                    **options: Any) -> list[dict[str, Any]]:
        """``{"prompt", "text", "detections": [{"label", "score", "box"}]}`` per image, boxes in image pixels."""
        results = []
        for prompt, text, found, size in zip(outputs["prompts"], outputs["texts"], outputs["objects"], image_sizes):
            results.append({"prompt": prompt, "text": text, "detections": [
                {"label": label, "score": round(score, 4), "box": _pixels(bins, size)} for label, bins, score in found]})
        return results

    def summary(self, prediction: Mapping[str, Any], head_config: Mapping[str, Any]) -> str:
        """``<OD> 2 boxes: circle 0.91, square 0.80``."""
        found = prediction.get("detections", [])
        named = ", ".join(f"{d['label']} {d['score']:.2f}" for d in found[:4]) + (", ..." if len(found) > 4 else "")
        return f"{prediction.get('prompt', '')} {len(found)} box{'es' if len(found) != 1 else ''}" + (
            f": {named}" if found else "")

    def render(self, canvas: Any, prediction: Mapping[str, Any], head_config: Mapping[str, Any], *, colour) -> None:
        """Each box with the text written for it."""
        for det in prediction.get("detections", []):
            canvas.box(det["box"], colour=colour, label=det["label"] or "?")

    def check_options(self, options: Mapping[str, Any], backbone: Any) -> None:
        """The phrase (``text``) fits the base's encoder beside the image tokens."""
        from .prompts import max_positions, prompt_lengths, prompt_too_long

        limit = max_positions(backbone.model)
        if limit is None or not options.get("text"):
            return
        prefix = options["prompt"] + options["text"]
        (length,) = prompt_lengths(backbone.processor, [prefix])
        if length > limit:
            raise ConfigError("option text: " + prompt_too_long(backbone.processor, prefix, length, limit))

    def plot(self, result: EvalResult, head_config: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """PR curves of the OD records (as the detection task draws them)."""
        from loradex.core.plots import plot_pr_curves

        return plot_pr_curves(result, out_dir) if result.details.get("pr50") else []

    def report(self, result: EvalResult, head_config: Mapping[str, Any]) -> str:
        """The metrics, then a few generated region captions beside their references."""
        text = super().report(EvalResult(metrics={k: v for k, v in result.metrics.items()
                                                  if not k.startswith(("ap50_", "ap_"))}), head_config)
        pairs = result.details.get("captions", [])[:8]
        if pairs:
            text += "\nregion captions (generated | reference)\n" + "\n".join(f"  {h} | {r}" for h, r in pairs) + "\n"
        return text


def parse_tokens(ids: Sequence[int], probs: Sequence[float], tokenizer: Any) -> list[tuple[str, list[int], float]]:
    """Generated token ids → (text, four bins, mean probability of the four location tokens) per box."""
    first = tokenizer.convert_tokens_to_ids("<loc_0>")
    objects: list[tuple[str, list[int], float]] = []
    text_ids: list[int] = []
    bins: list[int] = []
    scores: list[float] = []
    specials = set(tokenizer.all_special_ids)
    for index, token in enumerate(ids):
        if first <= token < first + 1000:
            bins.append(token - first)
            scores.append(probs[index] if index < len(probs) else 1.0)
            if len(bins) == 4:
                label = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
                objects.append((label, bins, sum(scores) / 4))
                text_ids, bins, scores = [], [], []
        elif token not in specials:
            if bins:  # text after an incomplete box: drop the partial box
                bins, scores = [], []
            text_ids.append(token)
    return objects


def _pixels(bins: Sequence[int], size: Sequence[float]) -> list[float]:
    from .locations import dequantize

    return dequantize(bins, float(size[0]), float(size[1]))
