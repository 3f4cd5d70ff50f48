"""Sample filters: which of a camera's recent frames go to the teacher.

A filter sees the frames a camera inferred since its last upload (times, the
student's predictions and confidences) and returns the indices to upload,
at most ``budget`` of them (the bandwidth budget).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Candidates", "uniform_filter", "edgesync_filter", "class_mix", "mix_shift"]


@dataclass
class Candidates:
    """Frames a camera may upload: stream ``times``, the student's ``preds`` and
    ``confs``, and the predicted class mix of the previous window."""

    times: np.ndarray
    preds: np.ndarray
    confs: np.ndarray
    prev_mix: np.ndarray

    def __len__(self) -> int:
        return len(self.times)


def uniform_filter(c: Candidates, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Evenly spaced frames with a random offset: the baselines' sampling."""
    n = len(c)
    budget = min(budget, n)
    if budget <= 0:
        return np.empty(0, np.int64)
    stride = n / budget
    return (np.floor(np.arange(budget) * stride + rng.uniform(0, stride))).astype(np.int64).clip(0, n - 1)


def class_mix(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of frames predicted as each class."""
    if len(preds) == 0:
        return np.full(num_classes, 1.0 / num_classes)
    return np.bincount(preds, minlength=num_classes)[:num_classes] / len(preds)


def mix_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two class mixes, in [0, 1]."""
    return 0.5 * float(np.abs(a - b).sum())


def edgesync_filter(c: Candidates, budget: int, now: float, tau: float, w_conf: float,
                    w_time: float, w_novel: float, min_gap: int) -> np.ndarray:
    """EdgeSync's filter (seed 1, "filters the samples by considering both
    timeliness and inference results").

    score = w_conf * (1 - confidence) + w_time * exp(-(now - t) / tau)
            + w_novel * max(0, share_now(pred) - share_prev(pred)) / share_now(pred)

    Frames are then taken greedily by score, at least ``min_gap`` frames apart, so
    the budget is not spent on near-duplicates of one object.
    """
    n = len(c)
    budget = min(budget, n)
    if budget <= 0:
        return np.empty(0, np.int64)
    mix_now = class_mix(c.preds, len(c.prev_mix))
    rise = np.maximum(mix_now - c.prev_mix, 0.0) / np.maximum(mix_now, 1e-6)
    score = (w_conf * (1.0 - c.confs) + w_time * np.exp(-(now - c.times) / tau)
             + w_novel * rise[c.preds])
    order = np.argsort(-score, kind="stable")
    taken = np.zeros(n, bool)
    picks: list[int] = []
    for gap in (min_gap, 0):  # relax spacing if the budget is not filled
        for i in order:
            if len(picks) == budget:
                break
            lo, hi = max(0, i - gap + 1), min(n, i + gap)
            if not taken[i] and (gap == 0 or not taken[lo:hi].any()):
                taken[i] = True
                picks.append(int(i))
    return np.sort(np.array(picks, np.int64))
