"""Grounding metrics from libraries: COCO mAP (the detection task's, via pycocotools), phrase-grounding
accuracy at IoU ≥ 0.5, and BLEU-2 of region captions (sacrebleu; short captions have no 4-grams)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from loradex.core.metrics import coco_evaluate
from loradex.core.task import EvalResult, MetricAccumulator


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class GroundingMetrics(MetricAccumulator):
    """Collects generated answers per record kind; scores each kind with its own metric."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.od_truth: list[tuple[np.ndarray, np.ndarray, tuple[float, float]]] = []
        self.od_found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.grounded: list[bool] = []
        self.captions: list[tuple[str, str]] = []
        self.regions = 0

    def update(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add the parsed answers of a batch (``outputs["objects"]``: per record (label, box, score)) and its records."""
        for found, target in zip(outputs["objects"], targets):
            kind = target["kind"]
            if kind == "od":
                known = [(self.labels.index(lab), box, score) for lab, box, score in found if lab in self.labels]
                self.od_truth.append((np.array(target["boxes"], dtype=float).reshape(-1, 4),
                                      np.array([self.labels.index(lab) for lab in target["labels"]]),
                                      tuple(target["size"])))
                self.od_found.append((np.array([b for _, b, _ in known], dtype=float).reshape(-1, 4),
                                      np.array([s for _, _, s in known], dtype=float),
                                      np.array([c for c, _, _ in known], dtype=int)))
            elif kind == "phrase":
                first = found[0][1] if found else None
                self.grounded.append(first is not None and any(iou(first, box) >= 0.5 for box in target["boxes"]))
            elif kind == "region":
                for caption, box in zip(target["labels"], target["boxes"]):
                    self.regions += 1
                    best = max(found, key=lambda f: iou(f[1], box), default=None)
                    if best is not None and iou(best[1], box) >= 0.5:
                        self.captions.append((best[0], caption))

    def compute(self) -> EvalResult:
        """``map``/``map50``/``map75`` (OD), ``grounding_acc50``, ``caption_bleu2`` and ``region_recall50``."""
        result = coco_evaluate(self.labels, self.od_truth, self.od_found) if self.od_truth else EvalResult({})
        metrics = dict(result.metrics)
        if self.grounded:
            metrics["grounding_acc50"] = float(np.mean(self.grounded))
        if self.regions:
            metrics["region_recall50"] = len(self.captions) / self.regions
            metrics["caption_bleu2"] = bleu(self.captions) if self.captions else 0.0
        return EvalResult(metrics=metrics, details={**result.details, "captions": self.captions[:50]})


def bleu(pairs: Sequence[tuple[str, str]]) -> float:
    """Corpus BLEU-2 (sacrebleu, 0..1) of (hypothesis, reference) captions."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(max_ngram_order=2).corpus_score([h for h, _ in pairs], [[r for _, r in pairs]]).score) / 100.0
