"""Frame sources a camera reads: the synthetic world's drifting stream (recordings: :mod:`.recorded`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from ..validation import check_positive, check_range, check_whole
from .conditions import Scenario
from .render import NUM_SHAPES, apply_condition, draw_object, render_background

__all__ = ["WorldConfig", "FrameBatch", "FrameSource", "CameraStream", "render_condition_set"]


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic world's fixed properties.

    Attributes:
        size: frame side in pixels (frames are size x size RGB).
        num_classes: number of object classes K (at most 8 shape families).
        fps: frames per second of stream time.
        object_seconds: a new object enters the view every this many seconds.
    """

    size: int = 64
    num_classes: int = 6
    fps: float = 2.0
    object_seconds: float = 4.0

    def __post_init__(self):
        check_whole(self, "size", minimum=16)
        check_range(self, "size", 16, 512)
        check_whole(self, "num_classes", minimum=2)
        check_range(self, "num_classes", 2, NUM_SHAPES)
        check_positive(self, "fps", "object_seconds")


@dataclass
class FrameBatch:
    """Consecutive frames of one source: ``images`` uint8 (N, H, W, 3), ``labels``
    int64 (N,) with -1 where unknown, ``times`` in seconds of stream time (N,)."""

    images: np.ndarray
    labels: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class FrameSource(Protocol):
    """What a camera reads frames from."""

    fps: float
    num_frames: int

    def frames(self, start: int, stop: int) -> FrameBatch: ...

    def drifted(self, times: np.ndarray) -> np.ndarray: ...


class CameraStream:
    """One camera's drifting synthetic stream.

    Frame ``i`` is a pure function of (seed, camera, i), so streams are
    reproducible and random-access. The camera reads ``scenario`` shifted by its
    own phase, so cameras of one fleet drift at different times.
    """

    def __init__(self, world: WorldConfig, scenario: Scenario, camera: int, num_cameras: int,
                 seed: int, duration: float):
        self.world, self.scenario, self.camera = world, scenario, camera
        self.seed = int(seed) * 1009 + camera
        self.duration = float(duration)
        self.fps = world.fps
        self.num_frames = int(round(duration * world.fps))
        self.phase = scenario.phase(camera, num_cameras)

    def u(self, t: float) -> float:
        """Scenario time this camera sees at stream time ``t``."""
        return t / self.duration - self.phase

    def condition_at(self, t: float):
        return self.scenario.condition_at(self.u(t))

    def drifted(self, times: np.ndarray) -> np.ndarray:
        return np.array([self.scenario.is_drifted(self.u(t)) for t in times], bool)

    def frames(self, start: int, stop: int) -> FrameBatch:
        idx = np.arange(start, stop)
        times = idx / self.fps
        images = np.empty((len(idx), self.world.size, self.world.size, 3), np.uint8)
        labels = np.empty(len(idx), np.int64)
        for k, (i, t) in enumerate(zip(idx, times)):
            images[k], labels[k] = self._render(int(i), float(t))
        return FrameBatch(images, labels, times)

    def _render(self, i: int, t: float) -> tuple[np.ndarray, int]:
        w = self.world
        cond = self.condition_at(t)
        bg_lo = int(math.floor(cond.background))
        frac = cond.background - bg_lo
        img = render_background(self.seed, bg_lo, (w.size, w.size)).copy()
        if frac > 0:
            img = (1 - frac) * img + frac * render_background(self.seed, bg_lo + 1, (w.size, w.size))
        j = math.floor(t / w.object_seconds)
        label = self._draw_object(img, j, t - j * w.object_seconds)
        rng = np.random.default_rng([self.seed, i & 0x7FFFFFFF, 1])
        img = apply_condition(img, cond, rng)
        return (img * 255 + 0.5).astype(np.uint8), label

    def _draw_object(self, img: np.ndarray, j: int, age: float) -> int:
        """Draw the ``j``-th object of the stream, ``age`` seconds after it entered."""
        w = self.world
        rng = np.random.default_rng([self.seed, j & 0x7FFFFFFF, 2])
        spawn_cond = self.condition_at(j * w.object_seconds)
        label = int(rng.choice(w.num_classes, p=spawn_cond.class_weights(w.num_classes)))
        s = w.size
        scale = rng.uniform(0.16, 0.26) * s
        aspect = rng.uniform(0.7, 1.0)
        angle0, spin = rng.uniform(0, 2 * np.pi), rng.uniform(-0.6, 0.6)
        start, end = rng.uniform(0.25, 0.75, 2) * s, rng.uniform(0.25, 0.75, 2) * s
        # Each class has a typical hue (as cars, buses and people have typical
        # looks): a cue a day-trained student leans on and that drift disturbs.
        hue = (label / w.num_classes + rng.normal(0.0, 0.04)) % 1.0
        color = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        thickness = int(rng.integers(2, 4))
        f = age / w.object_seconds
        center = tuple(start * (1 - f) + end * f)
        draw_object(img, label, center, scale, aspect, angle0 + spin * age, color, thickness)
        return label


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[h * 180.0, s * 255.0, v * 255.0]]], np.float32)
    return (cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0] / 255.0).astype(np.float32)


def render_condition_set(world: WorldConfig, conditions: list[str], n: int, seed: int,
                         cameras: int = 1) -> FrameBatch:
    """Labelled i.i.d. frames: ``n`` per condition per camera, one frame per object.

    Camera ``c`` is the stream of seed ``seed + c`` (its own background); every
    condition gets fresh objects. Frames come camera by camera, then condition
    by condition, ``n`` at a time.
    """
    from .conditions import Scenario

    per_object = int(round(world.object_seconds * world.fps))
    parts = []
    for c in range(cameras):
        for k, name in enumerate(conditions):
            stream = CameraStream(world, Scenario(f"hold-{name}", ((0.0, name),)), camera=0,
                                  num_cameras=1, seed=seed + c, duration=1.0)
            rng = np.random.default_rng([seed + c, k, 3])
            objects = np.arange(k * n, (k + 1) * n)
            parts += [stream.frames(int(p), int(p) + 1)
                      for p in objects * per_object + rng.integers(0, per_object, n)]
    return FrameBatch(np.concatenate([b.images for b in parts]),
                      np.concatenate([b.labels for b in parts]),
                      np.concatenate([b.times for b in parts]))
