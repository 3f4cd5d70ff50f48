"""The server's bookkeeping: retraining requests, jobs, labelled samples, the GPU timeline.

Pure bookkeeping on the virtual clock; the policies that fill these in live in
:mod:`driftlab.platform.strategies`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .training import TrainSpec


__all__ = ["Request", "Job", "Samples", "SampleStore", "condition_stats", "closest", "share_gpu"]


@dataclass
class Request:
    """A camera asks for retraining after uploading frames the teacher labelled.

    Attributes:
        camera: the camera's index.
        cutoff: stream time of the newest sample the request covers.
        ready: when the teacher's labels are back (cutoff + labeling time).
        est_accuracy: agreement of the camera's predictions with the teacher's
            labels on the uploaded frames, an estimate of its current accuracy.
        mix_shift: change of the camera's predicted class mix since the last request.
        last_update: when the camera last received new weights.
        condition: mean :func:`condition_stats` of every frame the camera saw
            since its last upload (its own summary of its scene; ``None``
            where unknown).
    """

    camera: int
    cutoff: float
    ready: float
    est_accuracy: float
    mix_shift: float
    last_update: float
    condition: np.ndarray | None = None


@dataclass
class Job:
    """A retraining job a manager starts.

    Attributes:
        request: the request it serves.
        spec: how to train.
        since: train on samples newer than this stream time (and up to the cutoff).
        tau: timeliness decay of sample weights (None: equal weights).
        data_fraction: share of the selected samples used (Ekya's subsample).
        share: share of the server's GPUs the job runs with.
        overhead_s: extra GPU-seconds charged (e.g. Ekya's micro-profiling).
        update_fraction: share of parameters the job may change and ship (AMS).
    """

    request: Request
    spec: TrainSpec
    since: float
    tau: float | None = None
    data_fraction: float = 1.0
    share: float = 1.0
    overhead_s: float = 0.0
    update_fraction: float = 1.0


class Samples(NamedTuple):
    """Teacher-labelled frames: uint8 ``images`` (N, H, W, 3), the teacher's
    ``logits`` (N, K), their argmax ``labels`` (N,), stream ``times`` (N,), and
    ``columns``: whatever else was stored with them, by name (the teacher's
    other outputs, such as genkd's ``attention`` (N, D), and what job plugins
    add, such as borrowing's ``condition`` (N, 6))."""

    images: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    logits: np.ndarray
    columns: dict[str, np.ndarray] = {}

    def subset(self, keep: np.ndarray) -> "Samples":
        return Samples(self.images[keep], self.labels[keep], self.times[keep], self.logits[keep],
                       {k: v[keep] for k, v in self.columns.items()})

    @staticmethod
    def concat(parts: list["Samples"]) -> "Samples":
        """``parts`` one after another (no samples if none has any); a column
        is kept where every part has it."""
        parts = [p for p in parts if len(p.labels)]
        if not parts:
            return Samples(np.empty((0, 1, 1, 3), np.uint8), np.empty(0, np.int64), np.empty(0),
                           np.empty((0, 0), np.float32))
        names = set.intersection(*(set(p.columns) for p in parts))
        return Samples(*(np.concatenate([p[i] for p in parts]) for i in range(4)),
                       {k: np.concatenate([p.columns[k] for p in parts]) for k in sorted(names)})


@dataclass
class SampleStore:
    """Teacher-labelled uploads of one camera, in arrival order, with the
    stream time each upload's labels were back (``ready``)."""

    parts: list[Samples] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)

    def add(self, images: np.ndarray, taught: dict[str, np.ndarray], times: np.ndarray,
            ready: float = 0.0, columns: dict[str, np.ndarray] | None = None) -> None:
        """One upload: its frames, the teacher's outputs on them (``"logits"``
        and any others) and any further ``columns`` (N, ...)."""
        logits = np.asarray(taught["logits"], np.float32)
        extra = {k: np.asarray(v, np.float32) for k, v in {**taught, **(columns or {})}.items() if k != "logits"}
        self.parts.append(Samples(images, logits.argmax(axis=1).astype(np.int64), times, logits, extra))
        self.ready.append(ready)

    def select(self, since: float, until: float, ready_by: float = math.inf) -> Samples:
        """Samples with ``since < t <= until`` whose labels were back by ``ready_by``
        (only the uploads that overlap the span are joined: a job's cost stays
        that of its window, not of the whole history)."""
        overlapping = [p for p, r in zip(self.parts, self.ready) if r <= ready_by and len(p.times)
                       and p.times.max() > since and p.times.min() <= until]
        s = Samples.concat(overlapping)
        return s.subset((s.times > since) & (s.times <= until))

    def forget(self, before: float) -> None:
        """Drop the uploads whose every sample is at or before stream time
        ``before`` (the newest upload stays: it describes the camera)."""
        keep = [i for i, p in enumerate(self.parts)
                if i == len(self.parts) - 1 or (len(p.times) and p.times.max() > before)]
        self.parts = [self.parts[i] for i in keep]
        self.ready = [self.ready[i] for i in keep]

    def newest(self, until: float) -> Samples:
        """The latest upload taken at or before stream time ``until``."""
        for part in reversed(self.parts):
            if len(part.times) and part.times.max() <= until:
                return part
        return Samples.concat([])


def condition_stats(images: np.ndarray) -> np.ndarray:
    """Each image's mean and spread per colour channel, in [0, 1]: what light,
    weather, sensor noise and colour cast move, a frame's condition."""
    x = images.reshape(len(images), -1, images.shape[-1]).astype(np.float32) / 255.0
    return np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1)


def closest(pool: Samples, reference: np.ndarray, k: int) -> Samples:
    """The ``k`` samples of ``pool`` closest in condition (its ``"condition"``
    column) to the mean of the ``reference`` conditions (rows of
    :func:`condition_stats`), in pool order."""
    if k <= 0 or len(pool.labels) == 0 or len(reference) == 0:
        return pool.subset(np.zeros(len(pool.labels), bool))
    distance = np.linalg.norm(pool.columns["condition"] - reference.mean(axis=0), axis=1)
    return pool.subset(np.sort(np.argsort(distance, kind="stable")[:k]))


def share_gpu(start: float, work: list[float], shares: list[float], gpus: float) -> list[float]:
    """Finish times of jobs that start together and share ``gpus`` GPUs.

    Job ``i`` needs ``work[i]`` GPU-seconds and gets ``shares[i]`` of the GPUs;
    when a job finishes its share goes to the others in proportion to theirs
    (work-conserving, as Ekya's scheduler re-assigns freed GPU).
    """
    remaining = np.asarray(work, float).copy()
    weight = np.maximum(np.asarray(shares, float), 1e-9)
    finish = np.full(len(work), start)
    active = remaining > 0
    t = start
    while active.any():
        rate = gpus * weight * active / weight[active].sum()
        dt = np.where(active, remaining / np.where(active, rate, 1.0), np.inf)
        step = dt.min()
        t += step
        remaining = np.where(active, remaining - rate * step, 0.0)
        done = active & (remaining <= 1e-9)
        finish[done] = t
        active &= ~done
    return finish.tolist()
