"""The two reference strategies: ``static`` never adapts, ``periodic`` retrains
every window for a fixed number of epochs."""
from __future__ import annotations

from ..scheduling import Job
from .base import CameraPolicy, Profiler, TrainingManager, job_seed
from .registry import register_strategy

__all__ = ["StaticPolicy", "PeriodicManager"]


class StaticPolicy(CameraPolicy):
    """Uploads nothing: the camera keeps its initial student (the "traditional" reference)."""

    def budget(self, num_frames: int) -> int:
        return 0


class PeriodicManager(TrainingManager):
    """Every window, retrain on that window's uploads for ``cfg.fixed_epochs``
    epochs; jobs run first come, first served."""

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        ready = self._ready(now)
        if not ready:
            return []
        first = min(ready, key=lambda r: (r.cutoff, r.camera))
        self._take([first])
        spec = self.spec(epochs=self.cfg.fixed_epochs, seed=job_seed(self.cfg, first))
        return [Job(first, spec, since=first.cutoff - self.cfg.window)]


register_strategy("static", StaticPolicy, TrainingManager, adapts=False)
register_strategy("periodic", CameraPolicy, PeriodicManager)
