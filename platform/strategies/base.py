"""The two halves of a strategy, one on each side of the network.

A strategy crosses the process line between a camera and the server, so it is
written as two classes, each built only where it runs:

- :class:`CameraPolicy`, one per camera, on the camera: how many of its frames
  it may upload (budget), which ones (its sample filter) and what it learns
  from the teacher's labels of them. *When* a camera uploads is its trigger
  (every ``period``, or on change points: :mod:`driftlab.platform.adapters`).
- :class:`TrainingManager`, one per fleet, on the server: takes the cameras'
  retraining requests and decides at run time which jobs run, in which order,
  on how much GPU and for how long.

:mod:`driftlab.platform.strategies.registry` pairs them under a name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..filters import Candidates, uniform_filter
from ..scheduling import Job, Request

if TYPE_CHECKING:
    from ..config import SimConfig
    from ..training import TrainSpec

__all__ = ["CameraPolicy", "TrainingManager", "Profiler", "train_spec", "latest_per_camera", "whole_ticks", "job_seed"]


class CameraPolicy:
    """Camera side, default: uploads every ``cfg.window`` seconds, a uniform
    sample of ``upload_fraction`` of its frames.

    Args:
        cfg: the run's config.
        camera: the camera's index in the fleet.

    Attributes:
        send_condition: whether the camera sends the mean condition of every
            frame it saw since its last upload with each upload (set when the
            strategy's manager reads ``Request.condition``: it costs 12 ms per
            upload at 64 px, 170 ms at 256 px).
    """

    send_condition = False

    def __init__(self, cfg: SimConfig, camera: int):
        self.cfg, self.camera = cfg, camera

    def period(self) -> float:
        """Seconds between the camera's uploads (and retraining requests)."""
        return self.cfg.window

    def budget(self, num_frames: int) -> int:
        """How many of ``num_frames`` candidate frames the camera may upload."""
        return int(round(self.cfg.upload_fraction * num_frames))

    def select(self, cands: Candidates, budget: int, now: float, rng: np.random.Generator) -> np.ndarray:
        """Indices into ``cands`` of the frames to upload, at most ``budget``."""
        return uniform_filter(cands, budget, rng)

    def observe_labels(self, labels: np.ndarray) -> None:
        """The teacher's labels of the frames just uploaded (AMS adapts its rate to them)."""


class Profiler(Protocol):
    """What a manager may ask of the server while planning (Ekya's micro-profiler)."""

    def profile(self, camera: int, since: float, until: float, layers: str, epochs: int,
                fraction: float = 1.0, min_samples: int = 8) -> tuple[list[float], int]:
        """A trial run of ``epochs`` epochs on ``fraction`` (at least
        ``min_samples``) of the window's samples (as a job would see them:
        plugins may add or drop some) left after a quarter (at
        least 2) is held out for validation: the validation accuracy before
        training and after each epoch (``epochs + 1`` values; none when the
        window has fewer than 8 samples, e.g. just after a zoo swap), and the
        sample-epochs the trial cost (its training only)."""
        ...

    def num_samples(self, camera: int, since: float, until: float) -> int:
        """The window's samples as a job would see them (before its data fraction)."""
        ...


class TrainingManager:
    """Server side, default: keeps requests, runs no job.

    Args:
        cfg: the run's config.
        changepoint: the cameras upload on change points (``+cp``), not every period.
    """

    def __init__(self, cfg: SimConfig, changepoint: bool = False):
        self.cfg, self.changepoint = cfg, changepoint
        self.pending: list[Request] = []

    @classmethod
    def reads_condition(cls, cfg: SimConfig, changepoint: bool) -> bool:
        """Whether this manager reads ``Request.condition`` (then cameras send it)."""
        return False

    def submit(self, request: Request) -> None:
        self.pending.append(request)

    def withdraw(self, camera: int, before: float) -> None:
        """Drop camera ``camera``'s requests cut off before stream time
        ``before``: a server plugin answered them (the zoo deployed a model)."""
        self.pending = [r for r in self.pending if r.camera != camera or r.cutoff >= before]

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        """Jobs to start at ``now`` (the GPUs are free); may drop stale requests."""
        return []

    def lookback(self) -> float:
        """Stream seconds before a request's cutoff that its jobs read samples
        from (the server forgets older uploads)."""
        return self.cfg.window

    def spec(self, **kwargs) -> TrainSpec:
        """A job's :func:`train_spec`."""
        return train_spec(self.cfg, **kwargs)

    def _ready(self, now: float) -> list[Request]:
        return [r for r in self.pending if r.ready <= now]

    def _take(self, requests: list[Request]) -> None:
        ids = {id(r) for r in requests}
        self.pending = [r for r in self.pending if id(r) not in ids]


def train_spec(cfg: SimConfig, **kwargs) -> TrainSpec:
    """A retraining (or profiling) job's :class:`~driftlab.platform.training.TrainSpec`
    with the fleet's distillation weight and learning rate; every job is made here."""
    from ..config import DISTILL_WEIGHTS
    from ..training import TrainSpec

    return TrainSpec(kd_weight=DISTILL_WEIGHTS[cfg.distill], lr=cfg.retrain_lr, **kwargs)


def latest_per_camera(requests: list[Request]) -> dict[int, Request]:
    """Each camera's newest request: it supersedes the older ones (its samples
    include theirs)."""
    latest: dict[int, Request] = {}
    for r in requests:
        if r.camera not in latest or r.cutoff > latest[r.camera].cutoff:
            latest[r.camera] = r
    return latest


def whole_ticks(period: float, tick: float) -> float:
    """``period`` rounded down to whole ticks (at least one)."""
    return max(tick, period - period % tick)


def job_seed(cfg: SimConfig, r: Request) -> int:
    """The seed of the job serving request ``r``: the same in any process."""
    return (cfg.seed * 1_000_003 + r.camera * 10_007 + int(round(r.cutoff * 10))) % (2**31)
