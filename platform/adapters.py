"""Camera components: when a camera uploads (its trigger) and what it does to
its own model between retraining jobs (its adapters).

Any strategy's cameras can hold any of them; a strategy's defaults and a
config's ``+name``/``-name`` edits decide which (see
:mod:`driftlab.platform.strategies.registry`, :func:`camera_components`):

- :class:`PeriodTrigger` (default): upload every policy period.
- :class:`NoUpload`: a strategy that never retrains keeps no frames.
- :class:`ChangePointTrigger` (``+cp``): upload when the camera's own feature
  stream shows a change point (seed 3's detector, :mod:`driftlab.platform.drift`),
  and every period for ``hold`` seconds after it.
- :class:`BatchNormRefit` (``+refit``, EdgeSync's default): refit the
  student's shallow BatchNorm statistics to the latest frames after every tick
  and every new model.

A component sees each tick's frames (``observe``) and each new model
(``on_model``); the camera loop calls the hooks and knows no component.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .drift import DriftDetector
from .models import recalibrate_bn
from .scheduling import condition_stats

if TYPE_CHECKING:
    from .camera import Camera
    from .config import RefitParams, SimConfig
    from .strategies import Strategy
    from .world import FrameBatch

__all__ = ["CameraAdapter", "PeriodTrigger", "NoUpload", "ChangePointTrigger", "BatchNormRefit", "camera_components"]


class CameraAdapter:
    """A camera component's hooks (each a no-op here)."""

    def observe(self, camera: Camera, batch: FrameBatch, confs: np.ndarray, until: float) -> None:
        """A tick's frames (up to stream time ``until``) and the student's confidences on them."""

    def on_model(self, camera: Camera) -> None:
        """The camera has just swapped in a new model."""


class PeriodTrigger(CameraAdapter):
    """Upload after every ``period``-th second of stream, on tick boundaries."""

    def __init__(self, period: float, tick: float):
        self.every = max(1, int(round(period / tick)))

    def due(self, tick: int, now: float, last_upload: float) -> bool:
        """Whether the camera uploads after tick ``tick`` (0-based), at stream time ``now``."""
        return (tick + 1) % self.every == 0

    def keep_since(self, now: float) -> float | None:
        """When the camera does not upload, frames older than this leave its
        buffer (``None``: they all stay for the next upload)."""
        return None


class NoUpload(PeriodTrigger):
    """The trigger of a strategy that never retrains: no uploads, and no
    frames kept for one."""

    def __init__(self):
        self.every = 0

    def observe(self, camera: Camera, batch: FrameBatch, confs: np.ndarray, until: float) -> None:
        camera.drop_frames()

    def due(self, tick: int, now: float, last_upload: float) -> bool:
        return False


class ChangePointTrigger(PeriodTrigger):
    """Upload when the camera's feature stream shows a change point, then every
    ``period`` for ``hold`` seconds (:meth:`DriftDetector.wants_upload`); while
    not uploading the camera keeps only its last period's frames."""

    def __init__(self, detector: DriftDetector, period: float):
        self.detector, self.period = detector, period

    def observe(self, camera: Camera, batch: FrameBatch, confs: np.ndarray, until: float) -> None:
        self.detector.observe(batch.times, batch.images, confs, until)

    def due(self, tick: int, now: float, last_upload: float) -> bool:
        return self.detector.wants_upload(now, last_upload, self.period)

    def keep_since(self, now: float) -> float:
        return now - self.period


class BatchNormRefit(CameraAdapter):
    """Refit the camera model's first ``layers`` BatchNorm layers to its latest
    frames (:func:`~driftlab.platform.models.recalibrate_bn`) after every tick
    and every new model, once the camera has left the condition its initial
    model fits (see :class:`~driftlab.platform.config.RefitParams`)."""

    def __init__(self, params: RefitParams):
        self.p = params
        # (times, images, their conditions when the home check or the window's reach needs them)
        self._recent: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._home: tuple[np.ndarray | None, int] = (None, 0)  # sum, count of conditions at home
        self._left_home = False
        self._until = 0.0  # the stream time the recent frames reach

    def observe(self, camera: Camera, batch: FrameBatch, confs: np.ndarray, until: float) -> None:
        p = self.p
        if p.layers == 0:
            return
        conditions = (condition_stats(batch.images) if (self._watching_home(camera) or p.max_window > p.window)
                      and len(batch) else None)
        self._until = until
        self._recent = [b for b in self._recent + [(batch.times, batch.images, conditions)]
                        if len(b[0]) and b[0][-1] >= until - max(p.window, p.max_window)]
        self._refit(camera)

    def on_model(self, camera: Camera) -> None:
        self._refit(camera)

    def _refit(self, camera: Camera) -> None:
        if self.p.layers == 0 or not self._recent:
            return
        latest = [b for b in self._recent if b[0][-1] >= self._until - self.p.window]
        if self._watching_home(camera):
            if self._at_home(latest):
                # The latest tick's frames join the reference of what home looks like.
                total, count = self._home
                tick = self._recent[-1][2]
                self._home = tick.sum(axis=0) + (total if count else 0.0), count + len(tick)
                return
            self._left_home = True
        frames = self._same_condition(latest)
        recalibrate_bn(camera.model, np.concatenate([b[1] for b in frames]), self.p.layers)

    def _same_condition(self, latest: list) -> list:
        """``latest`` (the last ``window`` seconds) and the earlier
        ``window``-long blocks, up to ``max_window`` seconds back, whose mean
        condition is within ``same_distance`` of its own, back to the first
        that is not."""
        p = self.p
        if p.max_window <= p.window:
            return latest
        now = np.concatenate([b[2] for b in latest]).mean(axis=0)
        frames, k = latest, 1
        while (k + 1) * p.window <= p.max_window:
            block = [b for b in self._recent
                     if self._until - (k + 1) * p.window <= b[0][-1] < self._until - k * p.window]
            if not block or np.linalg.norm(
                    np.concatenate([b[2] for b in block]).mean(axis=0) - now) >= p.same_distance:
                break
            frames, k = block + frames, k + 1
        return frames

    def _watching_home(self, camera: Camera) -> bool:
        """Whether the camera may still be at home: it runs its initial model
        and has not left the condition it started in."""
        return self.p.home_distance > 0 and camera.version == 0 and not self._left_home

    def _at_home(self, latest: list) -> bool:
        """Whether the mean condition of the ``latest`` frames is within
        ``home_distance`` of all the camera saw at home before them."""
        total, count = self._home
        recent = np.concatenate([b[2] for b in latest])
        return not count or np.linalg.norm(recent.mean(axis=0) - total / count) < self.p.home_distance


def camera_components(strategy: Strategy, cfg: SimConfig, period: float,
                      ) -> tuple[PeriodTrigger, list[CameraAdapter]]:
    """A camera's trigger and adapters for ``strategy`` (its policy uploads
    every ``period`` seconds). Under the change-point trigger the refit watches
    no home: the camera's first upload comes after a change."""
    import dataclasses

    if not strategy.adapts:
        trigger: PeriodTrigger = NoUpload()
    elif strategy.changepoint:
        trigger = ChangePointTrigger(DriftDetector(cfg.changepoint), period)
    else:
        trigger = PeriodTrigger(period, cfg.tick)
    adapters: list[CameraAdapter] = []
    if "refit" in strategy.components:
        params = dataclasses.replace(cfg.refit, home_distance=0.0) if strategy.changepoint else cfg.refit
        adapters.append(BatchNormRefit(params))
    return trigger, adapters
