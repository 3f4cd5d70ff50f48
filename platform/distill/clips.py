"""Synthetic action clips: an object performing one of K motions, in the world.

Seed 2 trains on UCF101/HMDB51; offline we make short clips with the camera
world's pieces instead: its backgrounds, its shape families (here a nuisance:
any shape can do any motion), a smaller distractor object drifting at random,
and the same drift conditions as the cameras (fog, night, rain, ...). The
class is the motion only, so a model must read time, not appearance. Every
clip is a pure function of ``(seed, index)``; splits are disjoint seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..world.conditions import CONDITIONS
from ..world.render import NUM_SHAPES, apply_condition, draw_object, render_background

__all__ = ["MOTIONS", "ClipConfig", "Clips", "make_clips"]

MOTIONS = ("move_right", "move_left", "approach", "rotate", "bounce", "zigzag", "stop_and_go")
"""The motion classes, in label order."""


@dataclass(frozen=True)
class ClipConfig:
    """Shape of the clip world.

    Attributes:
        frames: frames per clip.
        size: frame height and width in pixels.
        num_classes: how many of :data:`MOTIONS` to use (the first ones).
        conditions: drift conditions a clip is drawn under, uniformly.
        backgrounds: distinct background scenes per split.
    """

    frames: int = 8
    size: int = 32
    num_classes: int = 7
    conditions: tuple[str, ...] = ("day", "dusk", "night", "fog", "rain", "snow")
    backgrounds: int = 24

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be in [2, {len(MOTIONS)}], got {self.num_classes}")
        if self.frames < 4 or self.size < 16:
            raise ValueError(f"clips need >= 4 frames and >= 16 px, got {self.frames}x{self.size}")
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")


@dataclass
class Clips:
    """A labelled set of clips: ``videos`` uint8 (N, T, H, W, 3), ``labels`` (N,)."""

    videos: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def make_clips(cfg: ClipConfig, n: int, seed: int) -> Clips:
    """``n`` clips, classes balanced, drawn from the split with ``seed``."""
    videos = np.empty((n, cfg.frames, cfg.size, cfg.size, 3), np.uint8)
    labels = np.arange(n) % cfg.num_classes
    for i in range(n):
        videos[i] = _render_clip(cfg, int(labels[i]), seed, i)
    return Clips(videos, labels.astype(np.int64))


def _trajectory(motion: str, rng: np.random.Generator, frames: int, s: int):
    """Per-frame (x, y, scale factor, extra rotation) of the actor."""
    f = np.linspace(0.0, 1.0, frames)
    speed = rng.uniform(0.3, 0.5) * s
    x0, y0 = rng.uniform(0.3, 0.7) * s, rng.uniform(0.3, 0.7) * s
    x, y = np.full(frames, x0), np.full(frames, y0)
    scale, spin = np.ones(frames), np.zeros(frames)
    if motion == "move_right":
        x = x0 - speed / 2 + speed * f
    elif motion == "move_left":
        x = x0 + speed / 2 - speed * f
    elif motion == "approach":
        scale = 0.6 + rng.uniform(0.7, 1.0) * f
    elif motion == "rotate":
        spin = rng.choice([-1, 1]) * rng.uniform(1.5, 2.5) * f * math.pi
    elif motion == "bounce":
        y = y0 + speed / 2 - speed * np.abs(np.sin(f * math.pi * rng.uniform(1.5, 2.0)))
    elif motion == "zigzag":
        x = x0 + rng.choice([-1, 1]) * (speed / 2 - speed * f)
        y = y0 + 0.2 * s * np.where(np.arange(frames) % 2 == 0, 1.0, -1.0)
    elif motion == "stop_and_go":
        k = int(rng.integers(frames // 4, frames - frames // 4))
        d = rng.choice([-1, 1])
        step = np.where(np.arange(frames) < k, 0.0, 1.0 / max(frames - k, 1)).cumsum()
        x = x0 - d * speed / 2 + d * speed * np.minimum(step, 1.0)
        y = y0 + rng.uniform(-0.5, 0.5) * speed * np.minimum(step, 1.0)
    return x, y, scale, spin


def _render_clip(cfg: ClipConfig, label: int, seed: int, i: int) -> np.ndarray:
    rng = np.random.default_rng([seed, i, 21])
    s, T = cfg.size, cfg.frames
    background = render_background(seed, int(rng.integers(cfg.backgrounds)), (s, s))
    cond = CONDITIONS[cfg.conditions[int(rng.integers(len(cfg.conditions)))]]
    shape = int(rng.integers(NUM_SHAPES))
    color = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    radius, aspect, angle = rng.uniform(0.12, 0.18) * s, rng.uniform(0.7, 1.0), rng.uniform(0, 2 * math.pi)
    x, y, scale, spin = _trajectory(MOTIONS[label], rng, T, s)
    # The distractor: a smaller object on a random straight path.
    d_shape, d_color = int(rng.integers(NUM_SHAPES)), rng.uniform(0.3, 1.0, 3).astype(np.float32)
    d_start, d_vel = rng.uniform(0.1, 0.9, 2) * s, rng.uniform(-0.25, 0.25, 2) * s
    out = np.empty((T, s, s, 3), np.uint8)
    for t in range(T):
        img = background.copy()
        dx, dy = d_start + d_vel * t / (T - 1)
        draw_object(img, d_shape, (dx, dy), 0.07 * s, 1.0, 0.0, d_color, 1)
        draw_object(img, shape, (x[t], y[t]), radius * scale[t], aspect, angle + spin[t], color, 2)
        img = apply_condition(img, cond, np.random.default_rng([seed, i, t, 22]))
        out[t] = (img * 255 + 0.5).astype(np.uint8)
    return out
