"""Keypoint schemas: names, skeleton, left/right flip pairs and OKS sigmas.

A schema lives in the head configuration of an adapter (``AdapterSpec.head``)::

    {"keypoints": ["head", "left_hand", ...],      # names, in output order
     "skeleton": [[0, 1], ...],                    # pairs of keypoint indices to draw
     "flip_pairs": [[1, 2], [3, 4]],               # left/right pairs swapped on a horizontal flip
     "sigmas": [0.1, ...]}                         # optional: OKS sigma per keypoint
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loradex.core.errors import SpecError

STICK_FIGURE_KEYPOINTS = ("head", "left_hand", "right_hand", "left_foot", "right_foot")
"""The 5 keypoints of the built-in synthetic stick figures."""
STICK_FIGURE_SKELETON = ((0, 1), (0, 2), (0, 3), (0, 4))
"""Head to each hand and foot (arms and legs hang off the torso below the head)."""
STICK_FIGURE_FLIP_PAIRS = ((1, 2), (3, 4))

DEFAULT_SIGMA = 0.1
"""OKS sigma of a keypoint whose name has no known value."""
COCO_SIGMAS = {
    "nose": 0.026, "left_eye": 0.025, "right_eye": 0.025, "left_ear": 0.035, "right_ear": 0.035,
    "left_shoulder": 0.079, "right_shoulder": 0.079, "left_elbow": 0.072, "right_elbow": 0.072,
    "left_wrist": 0.062, "right_wrist": 0.062, "left_hip": 0.107, "right_hip": 0.107,
    "left_knee": 0.087, "right_knee": 0.087, "left_ankle": 0.089, "right_ankle": 0.089,
}
"""Per-keypoint OKS sigmas of the COCO person keypoints (pycocotools' values)."""


def stick_figure_schema() -> dict[str, Any]:
    """Head configuration of the synthetic stick figures."""
    return {
        "keypoints": list(STICK_FIGURE_KEYPOINTS),
        "skeleton": [list(p) for p in STICK_FIGURE_SKELETON],
        "flip_pairs": [list(p) for p in STICK_FIGURE_FLIP_PAIRS],
    }


def guess_flip_pairs(names: Sequence[str]) -> list[list[int]]:
    """Pairs of indices whose names differ only in a ``left``/``right`` prefix (COCO style)."""
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        for left, right in (("left_", "right_"), ("l_", "r_"), ("left", "right")):
            if name.startswith(left) and right + name[len(left):] in index:
                pairs.append([i, index[right + name[len(left):]]])
                break
    return pairs


def sigmas_for(head_config: Mapping[str, Any]) -> list[float]:
    """OKS sigmas: ``head_config["sigmas"]`` if given, else COCO's by name, else :data:`DEFAULT_SIGMA`."""
    names = head_config["keypoints"]
    given = head_config.get("sigmas")
    if given is not None:
        return [float(s) for s in given]
    return [COCO_SIGMAS.get(name, DEFAULT_SIGMA) for name in names]


def check_schema(head_config: Mapping[str, Any]) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """Validate a keypoint schema; return (names, skeleton, flip_pairs). Raises SpecError."""
    names = head_config.get("keypoints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SpecError("pose head needs 'keypoints': a non-empty list of keypoint names")
    if len(set(names)) != len(names):
        raise SpecError(f"pose keypoint names repeat: {names}")
    k = len(names)
    out = []
    for key in ("skeleton", "flip_pairs"):
        pairs = head_config.get(key) or []
        for pair in pairs:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(i, int) and 0 <= i < k for i in pair)):
                raise SpecError(f"pose head {key!r}: {pair!r} is not a pair of keypoint indices 0..{k - 1}")
        out.append([list(p) for p in pairs])
    sigmas = head_config.get("sigmas")
    if sigmas is not None and (not isinstance(sigmas, list) or len(sigmas) != k
                               or not all(isinstance(s, (int, float)) and s > 0 for s in sigmas)):
        raise SpecError(f"pose head 'sigmas' must be {k} positive numbers, got {sigmas!r}")
    return names, out[0], out[1]
