"""EdgeSync (seed 1: "EdgeSync: Faster Edge-model Updating via Adaptive
Continuous Learning for Video Data Drift", arXiv 2406.03001), as a camera
policy and a training manager. Only the abstract is available offline: the
filter formula and the manager are our design after it
(docs/methods/edgesync.md).

Camera: frames scored by timeliness and inference results (low confidence, a
rising predicted class), taken greedily and spaced (:func:`edgesync_filter`);
by default its cameras also refit their shallow BatchNorm statistics
(the ``refit`` component). Server: whenever the GPUs free up, start the most
urgent camera's job (priority from its estimated accuracy gap, the shift of
its class mix and its staleness), merge a camera's stale requests into its
newest, skip cameras that are accurate enough or have not drifted from the
condition their initial model was fit to, weight samples by timeliness
``exp(-age / tau)`` and size each job by online early stopping.
"""
from __future__ import annotations

import numpy as np

from ..filters import Candidates, edgesync_filter
from ..scheduling import Job, Request
from .base import CameraPolicy, Profiler, TrainingManager, job_seed, latest_per_camera, whole_ticks
from .registry import register_strategy

__all__ = ["EdgeSyncPolicy", "EdgeSyncManager"]


class EdgeSyncPolicy(CameraPolicy):
    """Uploads every ``edgesync.period`` the frames its filter scores highest."""

    def period(self) -> float:
        return whole_ticks(self.cfg.edgesync.period, self.cfg.tick)

    def select(self, cands: Candidates, budget: int, now: float, rng: np.random.Generator) -> np.ndarray:
        p = self.cfg.edgesync
        min_gap = max(1, int(self.cfg.world.object_seconds * self.cfg.world.fps / 2))
        return edgesync_filter(cands, budget, now, p.tau, p.w_conf, p.w_time, p.w_novel, min_gap)


class EdgeSyncManager(TrainingManager):
    """Priority order, merging, skipping and early stopping (see the module)."""

    def __init__(self, cfg, changepoint: bool = False):
        super().__init__(cfg, changepoint)
        self.home: dict[int, np.ndarray] = {}  # each camera's first upload's condition
        self.retrained: set[int] = set()

    def lookback(self) -> float:
        return self.cfg.edgesync.horizon

    @classmethod
    def reads_condition(cls, cfg, changepoint: bool) -> bool:
        """For ``home_distance``; off under the change-point trigger, whose first
        upload comes after a change and which decides itself when a camera has drifted."""
        return cfg.edgesync.home_distance > 0 and not changepoint

    def priority(self, r: Request, now: float) -> float:
        p = self.cfg.edgesync
        return (p.w_drift * (1.0 - r.est_accuracy) + p.w_mix * r.mix_shift
                + p.w_stale * (now - r.last_update) / self.cfg.window)

    def submit(self, request: Request) -> None:
        if request.condition is not None:
            self.home.setdefault(request.camera, request.condition)
        super().submit(request)

    def at_home(self, r: Request) -> bool:
        """Whether camera ``r.camera`` still runs its initial model in the
        condition that model was fit to (its first upload's, within
        ``home_distance``): it has not drifted, and retraining it there costs accuracy."""
        return (self.reads_condition(self.cfg, self.changepoint) and r.camera not in self.retrained
                and r.condition is not None
                and float(np.linalg.norm(r.condition - self.home[r.camera])) < self.cfg.edgesync.home_distance)

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        p = self.cfg.edgesync
        ready = self._ready(now)
        latest = latest_per_camera(ready)
        # A camera's newest ready request supersedes its older ones (nothing
        # reads them): dropped, so a camera waiting its turn holds no more
        # than its newest request's samples on the server.
        superseded = {id(r) for r in ready} - {id(r) for r in latest.values()}
        self.pending = [r for r in self.pending if id(r) not in superseded]
        ready = [r for r in ready if id(r) not in superseded]
        for cam, r in list(latest.items()):
            if r.est_accuracy >= p.skip_accuracy or self.at_home(r):
                self._take([q for q in ready if q.camera == cam])
                del latest[cam]
        if not latest:
            return []
        best = max(latest.values(), key=lambda r: (self.priority(r, now), -r.camera))
        self._take([q for q in ready if q.camera == best.camera])
        self.retrained.add(best.camera)
        spec = self.spec(epochs=p.max_epochs, patience=p.patience, seed=job_seed(self.cfg, best))
        return [Job(best, spec, since=best.cutoff - p.horizon, tau=p.tau)]


register_strategy("edgesync", EdgeSyncPolicy, EdgeSyncManager, components=("refit",))
