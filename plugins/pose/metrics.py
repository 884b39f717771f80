"""Pose metrics: PCK@0.05 / PCK@0.1 by box size, mean pixel error, per-keypoint error, OKS AP.

Distances are measured in original image pixels (normalised coordinates times the sample's
``scale``). A keypoint is correct at alpha when its distance to the truth is below
alpha * max(box width, box height). OKS AP is pycocotools' COCOeval (iouType="keypoints") on
ground truth and detections built in memory, one person per sample.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from loradex.core.task import EvalResult, MetricAccumulator

from .schema import sigmas_for

PCK_ALPHAS = (0.05, 0.1)


def oks_ap(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, visible: np.ndarray,
           boxes: np.ndarray, areas: np.ndarray, sigmas: Sequence[float]) -> float:
    """COCO keypoint AP (OKS 0.50:0.95) of one predicted person per sample, through pycocotools.

    ``pred``/``truth`` (N, K, 2) in pixels, ``scores`` (N,), ``visible`` (N, K), ``boxes`` (N, 2)
    box width/height, ``areas`` (N,). Returns -1.0 when no sample has a labelled keypoint.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n, k = visible.shape
    gt, dt = [], []
    for i in range(n):
        flags = np.where(visible[i] > 0, 2, 0)
        kps = np.concatenate([truth[i], flags[:, None]], axis=1).reshape(-1)
        gt.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                   "keypoints": [float(v) for v in kps], "num_keypoints": int((flags > 0).sum()),
                   "area": float(areas[i]), "bbox": [0.0, 0.0, float(boxes[i][0]), float(boxes[i][1])]})
        det = np.concatenate([pred[i], np.ones((k, 1))], axis=1).reshape(-1)
        dt.append({"image_id": i + 1, "category_id": 1, "keypoints": [float(v) for v in det], "score": float(scores[i])})
    if not any(g["num_keypoints"] for g in gt):
        return -1.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i + 1} for i in range(n)], "annotations": gt,
                        "categories": [{"id": 1, "name": "person", "keypoints": [str(j) for j in range(k)]}]}
        coco.createIndex()
        det = coco.loadRes(dt)
        evaluator = COCOeval(coco, det, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


class PoseMetrics(MetricAccumulator):
    """Collects predicted coordinates and targets; ``compute`` gives PCK, pixel error and OKS AP."""

    def __init__(self, head_config: Mapping[str, Any]) -> None:
        self.names = list(head_config["keypoints"])
        self.sigmas = sigmas_for(head_config)
        self._parts: dict[str, list[np.ndarray]] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        self._parts.setdefault(key, []).append(value.detach().float().cpu().numpy())

    def update(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        """Add the head's outputs (``coords``, ``scores``) and one batch of targets."""
        self._add("coords", outputs["coords"])
        self._add("scores", outputs["scores"])
        for key in ("keypoints", "visible", "scale", "box", "area"):
            self._add(key, targets[key])

    def compute(self) -> EvalResult:
        """Metrics over all batches added."""
        if not self._parts:
            return EvalResult(metrics={})
        p = {k: np.concatenate(v) for k, v in self._parts.items()}
        scale = p["scale"][:, None, :]
        pred, truth = p["coords"] * scale, p["keypoints"] * scale
        dist = np.linalg.norm(pred - truth, axis=-1)
        vis = p["visible"] > 0
        size = p["box"].max(axis=1)[:, None]
        count = max(int(vis.sum()), 1)
        metrics = {f"pck@{a:g}": float(((dist < a * size) & vis).sum() / count) for a in PCK_ALPHAS}
        metrics["mean_pixel_error"] = float((dist * vis).sum() / count)
        metrics["oks_ap"] = oks_ap(pred, p["scores"].mean(axis=1), truth, vis, p["box"], p["area"], self.sigmas)
        per_kp = {}
        for j, name in enumerate(self.names):
            v = vis[:, j]
            per_kp[name] = {
                "mean_pixel_error": float(dist[v, j].mean()) if v.any() else float("nan"),
                "pck@0.1": float((dist[v, j] < 0.1 * size[v, 0]).mean()) if v.any() else float("nan"),
                "count": int(v.sum()),
            }
        return EvalResult(metrics=metrics, details={"keypoints": self.names, "per_keypoint": per_kp,
                                                    "samples": int(len(dist))})
