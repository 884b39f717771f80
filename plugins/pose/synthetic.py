"""Built-in synthetic stick figures: 5 keypoints, deterministic from (seed, index).

A figure faces the viewer, so its left limbs hang off the image-right side of the torso. It
has a head circle, a torso, two two-segment arms and legs in a random pose, a random lean,
scale, place, colour and line width, on a noisy background of random tint.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from ..shapes import background, bright_colour, rng_for

SYNTHETIC_SIZE = 128
"""Side in pixels of every synthetic image (the transform resizes to the training size)."""


def _limb(start: np.ndarray, side: float, angle1: float, angle2: float, len1: float, len2: float) -> tuple[np.ndarray, np.ndarray]:
    """Joint and end of a two-segment limb; angles from straight down, positive outwards."""
    a = angle1
    joint = start + len1 * np.array([side * math.sin(a), math.cos(a)])
    b = angle1 + angle2
    end = joint + len2 * np.array([side * math.sin(b), math.cos(b)])
    return joint, end


def stick_figure(seed: int, index: int, size: int = SYNTHETIC_SIZE) -> tuple[Image.Image, np.ndarray, tuple[float, float, float, float]]:
    """One image, its keypoints (5, 2) in pixels (head, left/right hand, left/right foot), and the figure's box.

    The box is (x0, y0, x1, y1) in pixels around everything drawn.
    """
    rng = rng_for(seed, index)
    image = background(rng, size)
    # body in unit coordinates, y pointing down; the person's left is +x (they face the viewer)
    neck = np.array([0.0, 0.0])
    pelvis = np.array([0.0, rng.uniform(0.28, 0.34)])
    head_r = rng.uniform(0.07, 0.09)
    head = neck - np.array([0.0, head_r * 1.15])
    shoulder_w, hip_w = rng.uniform(0.06, 0.1), rng.uniform(0.04, 0.07)
    points = {"neck": neck, "pelvis": pelvis, "head": head}
    segments = [("neck", "pelvis"), ("l_sh", "r_sh"), ("l_hip", "r_hip")]
    for side, tag in ((1.0, "l"), (-1.0, "r")):
        sh = neck + np.array([side * shoulder_w, 0.02])
        hip = pelvis + np.array([side * hip_w, 0.0])
        elbow, hand = _limb(sh, side, rng.uniform(-0.3, 2.8), rng.uniform(-1.4, 1.4), rng.uniform(0.14, 0.19), rng.uniform(0.13, 0.18))
        knee, foot = _limb(hip, side, rng.uniform(-0.15, 0.9), rng.uniform(-1.0, 0.3), rng.uniform(0.18, 0.24), rng.uniform(0.18, 0.24))
        points.update({f"{tag}_sh": sh, f"{tag}_hip": hip, f"{tag}_elbow": elbow, f"{tag}_hand": hand,
                       f"{tag}_knee": knee, f"{tag}_foot": foot})
        segments += [(f"{tag}_sh", f"{tag}_elbow"), (f"{tag}_elbow", f"{tag}_hand"),
                     (f"{tag}_hip", f"{tag}_knee"), (f"{tag}_knee", f"{tag}_foot")]
    lean = rng.uniform(-0.35, 0.35)
    rot = np.array([[math.cos(lean), -math.sin(lean)], [math.sin(lean), math.cos(lean)]])
    points = {k: rot @ (v - pelvis) for k, v in points.items()}
    # fit: the figure's larger side covers 45-90% of the image, placed anywhere inside
    all_pts = np.stack(list(points.values()))
    lo = np.minimum(all_pts.min(0), points["head"] - head_r)
    hi = np.maximum(all_pts.max(0), points["head"] + head_r)
    scale = rng.uniform(0.45, 0.9) * size / float((hi - lo).max())
    width = max(1.5, scale * rng.uniform(0.02, 0.035))
    extent = (hi - lo) * scale + 2 * width
    offset = np.array([rng.uniform(0, max(size - extent[0], 0)), rng.uniform(0, max(size - extent[1], 0))]) + width
    px = {k: (v - lo) * scale + offset for k, v in points.items()}
    colour = bright_colour(rng)
    draw = ImageDraw.Draw(image)
    line = max(1, round(width))
    for a, b in segments:
        draw.line([tuple(px[a]), tuple(px[b])], fill=colour, width=line)
    for end in ("l_hand", "r_hand"):
        x, y = px[end]
        draw.ellipse((x - line, y - line, x + line, y + line), fill=colour)
    r = head_r * scale
    hx, hy = px["head"]
    draw.ellipse((hx - r, hy - r, hx + r, hy + r), outline=colour, width=line)
    keypoints = np.stack([px["head"], px["l_hand"], px["r_hand"], px["l_foot"], px["r_foot"]]).astype(np.float32)
    x0, y0 = (lo - lo) * scale + offset - width
    x1, y1 = (hi - lo) * scale + offset + width
    box = (float(max(x0, 0)), float(max(y0, 0)), float(min(x1, size)), float(min(y1, size)))
    return image, keypoints, box
