"""Rendering of synthetic camera frames: a background, one moving object, effects.

Everything is a pure function of integer seeds, so any frame can be redrawn at
any time (a restarted camera resumes exactly where it stopped). Objects come
from ``NUM_SHAPES`` distinct shape families, each with intra-class variation
(size, aspect, rotation, colour, outline width).
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from .conditions import Condition

__all__ = ["SHAPE_NAMES", "NUM_SHAPES", "render_background", "draw_object", "apply_condition"]

SHAPE_NAMES = ("disc", "square", "triangle", "star", "cross", "ring", "bar", "diamond")
NUM_SHAPES = len(SHAPE_NAMES)


@lru_cache(maxsize=256)
def render_background(seed: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """Background scene ``index`` of the camera with ``seed``: float32 HxWx3 in [0, 1].

    A sky/ground gradient with a few buildings and a road texture; different
    indices give different scenes (the camera looks somewhere else).
    """
    h, w = size
    rng = np.random.default_rng([seed, index, 7])
    sky, ground = rng.uniform(0.45, 0.85, 3), rng.uniform(0.2, 0.55, 3)
    horizon = int(h * rng.uniform(0.3, 0.55))
    img = np.empty((h, w, 3), np.float32)
    ramp = np.linspace(0.0, 1.0, h)[:, None, None]
    img[:] = sky * (1 - ramp) + ground * ramp
    for _ in range(rng.integers(3, 7)):
        bw, bh = rng.integers(w // 10, w // 4), rng.integers(h // 8, horizon + 1)
        x0 = rng.integers(0, w - bw)
        cv2.rectangle(img, (int(x0), int(horizon - bh)), (int(x0 + bw), horizon),
                      rng.uniform(0.15, 0.7, 3).tolist(), -1)
    texture = rng.normal(0.0, 0.04, (h // 4, w // 4, 3)).astype(np.float32)
    img += cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(img, 0.0, 1.0)


def draw_object(img: np.ndarray, shape: int, center: tuple[float, float], scale: float,
                aspect: float, angle: float, color: np.ndarray, thickness: int) -> None:
    """Draw object of shape family ``shape`` onto ``img`` in place."""
    cx, cy = center
    r = scale
    if shape == 0:  # disc
        cv2.ellipse(img, (int(cx), int(cy)), (int(r), max(int(r * aspect), 2)),
                    math.degrees(angle), 0, 360, color.tolist(), -1, cv2.LINE_AA)
        return
    if shape == 5:  # ring
        cv2.ellipse(img, (int(cx), int(cy)), (int(r), max(int(r * aspect), 3)),
                    math.degrees(angle), 0, 360, color.tolist(), max(thickness, 2), cv2.LINE_AA)
        return
    if shape == 1:  # square
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == 2:  # triangle
        pts = [(0, -1.2), (1.1, 0.9), (-1.1, 0.9)]
    elif shape == 3:  # star
        pts = [((1.2 if k % 2 == 0 else 0.5) * math.sin(k * math.pi / 5),
                -(1.2 if k % 2 == 0 else 0.5) * math.cos(k * math.pi / 5)) for k in range(10)]
    elif shape == 4:  # cross
        a, b = 0.35, 1.15
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
               (-b, a), (-b, -a), (-a, -a)]
    elif shape == 6:  # bar
        pts = [(-1.3, -0.3), (1.3, -0.3), (1.3, 0.3), (-1.3, 0.3)]
    else:  # diamond
        pts = [(0, -1.3), (0.7, 0), (0, 1.3), (-0.7, 0)]
    c, s = math.cos(angle), math.sin(angle)
    poly = np.array([(cx + r * (c * x - s * y * aspect), cy + r * (s * x + c * y * aspect))
                     for x, y in pts], np.int32)
    cv2.fillPoly(img, [poly], color.tolist(), cv2.LINE_AA)


def apply_condition(img: np.ndarray, cond: Condition, rng: np.random.Generator) -> np.ndarray:
    """Apply lighting, weather, colour cast and sensor noise to a clean frame."""
    h, w, _ = img.shape
    out = img * np.asarray(cond.cast, np.float32)
    out = out * cond.light
    if cond.fog > 0:
        haze = 0.55 + 0.15 * cv2.resize(rng.random((4, 4)).astype(np.float32), (w, h))
        out = out * (1 - cond.fog) + (haze * min(cond.light, 1.0))[..., None] * cond.fog
    if cond.rain > 0:
        layer = np.zeros((h, w), np.float32)
        for _ in range(int(cond.rain * h * w / 80)):
            x, y = rng.integers(0, w), rng.integers(0, h)
            cv2.line(layer, (int(x), int(y)), (int(x - 2), int(y + 7)), 0.6, 1)
        out = np.maximum(out, layer[..., None] * min(cond.light + 0.2, 1.0))
    if cond.snow > 0:
        layer = np.zeros((h, w), np.float32)
        n = int(cond.snow * h * w / 40)
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        layer[ys, xs] = 1.0
        layer = cv2.GaussianBlur(layer, (3, 3), 0.7) * 2.0
        out = out + layer[..., None] * 0.8
    if cond.noise > 0:
        out = out + rng.normal(0.0, cond.noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)
