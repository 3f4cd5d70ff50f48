"""AMS (Khani et al., "Real-Time Video Inference on Edge Devices via Adaptive
Model Streaming", ICCV'21), as a camera policy and a training manager.

The server fine-tunes its copy of each camera's student every
``update_period`` on the last ``horizon`` seconds of sampled frames, a short
update, and ships only the ``update_fraction`` of parameters with the largest
gradients. The camera's sampling rate adapts to scene change:
``rate -= 0.2 * tanh(20 * (phi - 0.6))``, clipped to [0.1, 1], where ``phi``
is the agreement of consecutive teacher labels.
"""
from __future__ import annotations

import math

import numpy as np

from ..scheduling import Job
from .base import CameraPolicy, Profiler, TrainingManager, job_seed, whole_ticks
from .registry import register_strategy

__all__ = ["AMS_CONFIG", "AMSPolicy", "AMSManager"]

AMS_CONFIG = {
    "update_period": 20.0,   # s between updates (paper: ~10 s; our ticks are 10 s, one update every 2)
    "horizon": 240.0,        # s of sampled frames an update trains on (paper: ~250 s)
    "epochs": 2,             # a short update
    "update_fraction": 0.2,  # share of parameters shipped (paper: 1-20 %)
}


class AMSPolicy(CameraPolicy):
    """Uploads every ``update_period`` at an adaptive share of its budget."""

    def __init__(self, cfg, camera: int):
        super().__init__(cfg, camera)
        self.rate = 1.0

    def period(self) -> float:
        return whole_ticks(AMS_CONFIG["update_period"], self.cfg.tick)

    def budget(self, num_frames: int) -> int:
        return int(round(self.rate * self.cfg.upload_fraction * num_frames))

    def observe_labels(self, labels: np.ndarray) -> None:
        if len(labels) < 2:
            return
        phi = float((labels[1:] == labels[:-1]).mean())
        self.rate = float(np.clip(self.rate - 0.2 * math.tanh(20 * (phi - 0.6)), 0.1, 1.0))


class AMSManager(TrainingManager):
    """Oldest camera first; a camera's newest request supersedes its older ones
    (its horizon covers their samples)."""

    def lookback(self) -> float:
        return AMS_CONFIG["horizon"]

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        ready = self._ready(now)
        if not ready:
            return []
        first = min(ready, key=lambda r: (r.cutoff, r.camera))
        same = [r for r in ready if r.camera == first.camera]
        newest = max(same, key=lambda r: r.cutoff)
        self._take(same)
        spec = self.spec(epochs=AMS_CONFIG["epochs"], seed=job_seed(self.cfg, newest))
        return [Job(newest, spec, since=newest.cutoff - AMS_CONFIG["horizon"],
                    update_fraction=AMS_CONFIG["update_fraction"])]


register_strategy("ams", AMSPolicy, AMSManager)
