"""Untrimmed videos as snippet-feature sequences, with video-level labels.

A feature-level world: each snippet's feature is what a frozen backbone would
give, made directly. Background drifts slowly (a per-video random walk) and
has short distractor events (bursts that change the features but are no
action); an action instance of class k adds class k's prototype with a ramped
onset/offset and a motion-phase pattern. Instances run from a few snippets to
dozens; some videos hold several classes. Training sees only which classes a
video contains; segments are for evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["UntrimmedConfig", "Video", "make_videos", "segments_frame"]


@dataclass(frozen=True)
class UntrimmedConfig:
    """The untrimmed-video world.

    Attributes:
        num_classes: action classes K.
        feature_dim: snippet feature size D.
        min_len, max_len: snippets per video.
        max_instances: most action instances per video (at least one).
        min_instance, max_instance: snippets per instance (short to long).
        multi_class: probability that a video holds a second class.
        distractors: expected distractor events per 100 snippets.
        strength: norm scale of an action's prototype relative to noise.
        noise: per-snippet noise.
        seed: the class prototypes (fixed across splits).
    """

    num_classes: int = 5
    feature_dim: int = 48
    min_len: int = 200
    max_len: int = 400
    max_instances: int = 4
    min_instance: int = 5
    max_instance: int = 60
    multi_class: float = 0.3
    distractors: float = 1.5
    strength: float = 1.0
    noise: float = 1.0
    seed: int = 0


@dataclass
class Video:
    name: str
    features: np.ndarray          # (T, D) float32
    labels: np.ndarray            # (K,) multi-hot, the only training signal
    segments: list[tuple[int, int, int]]  # (class, start, end) snippets, end exclusive


def _prototypes(cfg: UntrimmedConfig) -> np.ndarray:
    rng = np.random.default_rng(cfg.seed)
    p = rng.normal(size=(cfg.num_classes, cfg.feature_dim))
    return cfg.strength * 2.0 * p / np.linalg.norm(p, axis=1, keepdims=True) * np.sqrt(cfg.feature_dim) / 3


def make_videos(cfg: UntrimmedConfig, n: int, seed: int, prefix: str = "v") -> list[Video]:
    """``n`` videos; the split is given by ``seed`` (prototypes by ``cfg.seed``)."""
    protos = _prototypes(cfg)
    phase_dirs = np.random.default_rng(cfg.seed + 1).normal(size=(cfg.num_classes, cfg.feature_dim))
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n):
        T = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        D = cfg.feature_dim
        walk = np.cumsum(rng.normal(0, 0.05, (T, D)), axis=0) + rng.normal(0, 0.5, D)
        x = walk + rng.normal(0, cfg.noise, (T, D))
        for _ in range(rng.poisson(cfg.distractors * T / 100)):  # no-action bursts
            s, L = int(rng.integers(0, T - 3)), int(rng.integers(2, 6))
            x[s:s + L] += rng.normal(0, 1.2, D)
        classes = [int(rng.integers(cfg.num_classes))]
        if rng.random() < cfg.multi_class:
            classes.append(int(rng.choice([c for c in range(cfg.num_classes) if c != classes[0]])))
        segments = _place(rng, T, cfg, classes)
        for c, s, e in segments:
            L = e - s
            ramp = np.minimum(1.0, np.minimum(np.arange(1, L + 1), np.arange(L, 0, -1)) / 2.0)
            phase = np.sin(np.linspace(0, np.pi * max(1, L // 10), L))
            x[s:e] += ramp[:, None] * protos[c] + 0.3 * phase[:, None] * phase_dirs[c]
        labels = np.zeros(cfg.num_classes, np.float32)
        labels[[c for c, _, _ in segments]] = 1.0
        videos.append(Video(f"{prefix}{seed}-{i:04d}", x.astype(np.float32), labels, segments))
    return videos


def _place(rng, T: int, cfg: UntrimmedConfig, classes: list[int]) -> list[tuple[int, int, int]]:
    """Non-overlapping instances, at least a few snippets apart."""
    count = int(rng.integers(1, cfg.max_instances + 1))
    out: list[tuple[int, int, int]] = []
    for k in range(max(count, len(classes))):
        c = classes[k] if k < len(classes) else int(rng.choice(classes))
        for _ in range(50):
            L = int(np.exp(rng.uniform(np.log(cfg.min_instance), np.log(cfg.max_instance))))
            s = int(rng.integers(2, T - L - 2))
            if all(s >= e0 + 4 or s + L + 4 <= s0 for _, s0, e0 in out):
                out.append((c, s, s + L))
                break
    return sorted(out, key=lambda seg: seg[1])


def segments_frame(videos: list[Video]) -> pd.DataFrame:
    """Ground truth in :func:`driftlab.platform.metrics.detection_map`'s format
    (times in snippets)."""
    return pd.DataFrame([(v.name, c, float(s), float(e)) for v in videos for c, s, e in v.segments],
                        columns=["video", "label", "t_start", "t_end"])
