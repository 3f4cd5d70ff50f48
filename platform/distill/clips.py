"""Synthetic action clips: an object making two movements in a row, in the world.

Seed 2 trains on UCF101/HMDB51; offline we make short clips with the camera
world's pieces instead: its backgrounds, its shape families (here a nuisance:
any shape can do any motion), a smaller distractor object drifting at random,
and the same drift conditions as the cameras (fog, night, rain, ...). The
class is the motion only, so a model must read time, not appearance: the
actor moves one way in the first half of the clip and one way (the same, the
opposite, or a turn) in the second, so ``right_then_up`` and ``up_then_right``
differ only in order and ``right_then_left`` ends where it began. Its
displacement is small (a few pixels per half at 32 px), so the classes part
only for a model that compares frames before it pools space away: a 3-D
network from its first stages does, a 2-D-early student struggles, and the
teacher has something to teach. Every clip is a pure function of
``(seed, index)``; splits are disjoint seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..world.conditions import CONDITIONS
from ..world.render import NUM_SHAPES, apply_condition, draw_object, render_background

__all__ = ["MOTIONS", "ClipConfig", "Clips", "make_clips"]

_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS = tuple(a if a == b else f"{a}_then_{b}" for a in _DIRECTIONS for b in _DIRECTIONS)
"""The motion classes, in label order: a direction for each half of the clip (16)."""


@dataclass(frozen=True)
class ClipConfig:
    """Shape of the clip world.

    Attributes:
        frames: frames per clip.
        size: frame height and width in pixels.
        num_classes: how many of :data:`MOTIONS` to use (the first ones).
        displacement: range of the actor's displacement per half clip, as a
            fraction of ``size`` (drawn uniformly per clip).
        distractors: smaller objects crossing the frame on straight paths.
        conditions: drift conditions a clip is drawn under, uniformly.
        backgrounds: distinct background scenes per split.
    """

    frames: int = 8
    size: int = 32
    num_classes: int = len(MOTIONS)
    displacement: tuple[float, float] = (0.08, 0.2)
    distractors: int = 1
    conditions: tuple[str, ...] = ("day", "dusk", "night", "fog", "rain", "snow")
    backgrounds: int = 24

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be in [2, {len(MOTIONS)}], got {self.num_classes}")
        if self.frames < 4 or self.size < 16:
            raise ValueError(f"clips need >= 4 frames and >= 16 px, got {self.frames}x{self.size}")
        if not 0 < self.displacement[0] <= self.displacement[1] <= 0.3 or self.distractors < 0:
            raise ValueError(f"displacement must be 0 < low <= high <= 0.3 and distractors >= 0, "
                             f"got {self.displacement} and {self.distractors}")
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


def _trajectory(label: int, displacement: float, frames: int) -> np.ndarray:
    """The actor's offset per frame (frames, 2) in pixels, centred on zero:
    the first half along one direction, the second along another."""
    name = MOTIONS[label]
    first, _, second = name.partition("_then_")
    f = np.linspace(0.0, 1.0, frames)
    path = (np.outer(np.clip(2 * f, 0, 1), _DIRECTIONS[first])
            + np.outer(np.clip(2 * f - 1, 0, 1), _DIRECTIONS[second or first]))
    return displacement * (path - path.mean(0))


def _render_clip(cfg: ClipConfig, label: int, seed: int, i: int) -> np.ndarray:
    rng = np.random.default_rng([seed, i, 21])
    s, T = cfg.size, cfg.frames
    background = render_background(seed, int(rng.integers(cfg.backgrounds)), (s, s))
    cond = CONDITIONS[cfg.conditions[int(rng.integers(len(cfg.conditions)))]]
    shape = int(rng.integers(NUM_SHAPES))
    color = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    radius, aspect, angle = rng.uniform(0.12, 0.17) * s, rng.uniform(0.6, 1.0), rng.uniform(0, 2 * math.pi)
    path = rng.uniform(0.4, 0.6, 2) * s + _trajectory(label, rng.uniform(*cfg.displacement) * s, T)
    distractors = []
    for _ in range(cfg.distractors):   # smaller objects on random straight paths
        start, velocity = rng.uniform(0.1, 0.9, 2) * s, rng.uniform(-0.3, 0.3, 2) * s
        distractors.append((int(rng.integers(NUM_SHAPES)), rng.uniform(0.3, 1.0, 3).astype(np.float32),
                            start, velocity, rng.uniform(0.06, 0.08) * s))
    out = np.empty((T, s, s, 3), np.uint8)
    for t in range(T):
        img = background.copy()
        for d_shape, d_color, start, velocity, d_radius in distractors:
            draw_object(img, d_shape, tuple(start + velocity * t / (T - 1)), d_radius, 0.8, 0.0, d_color, 1)
        draw_object(img, shape, tuple(path[t]), radius, aspect, angle, color, 2)
        img = apply_condition(img, cond, np.random.default_rng([seed, i, t, 22]))
        out[t] = (img * 255 + 0.5).astype(np.uint8)
    return out
