"""Seed 3's change-point module as a camera's drift detector.

A strategy run with the ``changepoint`` trigger (``<strategy>+cp``) does not
upload and retrain every window: its camera watches its own feature stream and
asks for retraining when that stream shows a change point, then keeps
retraining every period for ``hold`` seconds while its model catches up.

The feature stream is what a camera has without labels: per-frame statistics
that lighting, weather and colour casts move but a passing object hardly does
(see :func:`frame_features`), averaged into snippets of ``snippet_s`` seconds.
Over the snippets so far, :func:`rate_hierarchy` builds seed 3's temporal
hierarchy (level ``l`` smooths level ``l-1`` over ``2**l`` snippets) and each
level's two-window rate of change, in units of the stream's own noise. A local
peak of a rate above ``threshold`` is a change point; it is reported as soon
as the ``w`` snippets after it are in (its scale's window), and only then:
detection lags a change by one window of the finest scale that sees it plus
the rest of the tick, and an old peak is never reported late.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validation import check_non_negative, check_positive, check_whole
from .wtal.changepoints import box_smooth, change_rate, local_peaks

NOISE_FLOOR = 0.01  # features are intensities in [0, 1]: smaller moves are not drift

__all__ = ["ChangePointParams", "DriftDetector", "frame_features", "rate_hierarchy"]


@dataclass(frozen=True)
class ChangePointParams:
    """The ``changepoint`` trigger's settings.

    Attributes:
        snippet_s: seconds of frames averaged into one snippet.
        levels: hierarchy depth (scales of 2, 4, ... snippets).
        threshold: least peak height of a rate, in units of the stream's noise.
        min_snippets: snippets seen before the detector may fire.
        hold: seconds after a change point during which the camera keeps
            retraining every period.
    """

    snippet_s: float = 2.0
    levels: int = 3
    threshold: float = 5.0
    min_snippets: int = 30
    hold: float = 120.0

    def __post_init__(self):
        check_positive(self, "snippet_s", "threshold")
        check_whole(self, "levels", minimum=1)
        check_whole(self, "min_snippets", minimum=2)
        check_non_negative(self, "hold")


def frame_features(images: np.ndarray, confs: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 frames and the student's confidences -> (N, 8) features:
    per-channel median and inter-quartile range (the background's colour and
    contrast; an object covers too few pixels to move them), edge energy
    (noise, rain and snow raise it, fog lowers it) and confidence."""
    x = images.astype(np.float32) / 255.0
    q25, q50, q75 = np.quantile(x.reshape(len(x), -1, 3), [0.25, 0.5, 0.75], axis=1)
    grey = x.mean(-1)
    edges = np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))
    return np.concatenate([q50, q75 - q25, edges[:, None], confs[:, None]], axis=1).astype(np.float64)


class DriftDetector:
    """Online change points of one camera's feature stream."""

    def __init__(self, params: ChangePointParams):
        self.p = params
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}
        self._checked = 0                     # complete snippets at the last check
        self.changes: list[float] = []        # stream times of the change points found
        self.detected_at: list[float] = []    # when each was found

    def observe(self, times: np.ndarray, images: np.ndarray, confs: np.ndarray, until: float) -> None:
        """Add a tick's frames (up to stream time ``until``) and look for new change points."""
        if len(times):
            feats = frame_features(images, confs)
            bins = np.floor(times / self.p.snippet_s).astype(int)
            for b in np.unique(bins):
                sel = bins == b
                self._sums[b] = self._sums.get(b, 0.0) + feats[sel].sum(0)
                self._counts[b] = self._counts.get(b, 0) + int(sel.sum())
        complete = [b for b in sorted(self._sums) if (b + 1) * self.p.snippet_s <= until + 1e-9]
        checked, self._checked = self._checked, len(complete)
        if len(complete) < self.p.min_snippets:
            return
        x = np.stack([self._sums[b] / self._counts[b] for b in complete])
        for w, rate in rate_hierarchy(x, self.p.levels).items():
            rate = rate[: len(x) - w + 1]            # points with w snippets after them
            for t in local_peaks(rate, w, 0.0):
                fresh = t + w > checked              # confirmable only since this tick
                at = complete[t] * self.p.snippet_s
                if fresh and rate[t] > self.p.threshold and all(
                        abs(at - c) > 2 ** self.p.levels * self.p.snippet_s for c in self.changes):
                    self.changes.append(at)
                    self.detected_at.append(until)

    def wants_upload(self, now: float, last_upload: float, period: float) -> bool:
        """Upload (and retrain) now: a change point was found since the last
        upload, or the latest one is within ``hold`` and a period has passed."""
        if not self.changes:
            return False
        if max(self.detected_at) > last_upload:
            return True
        return now - max(self.changes) <= self.p.hold and now - last_upload >= period - 1e-9


def rate_hierarchy(x: np.ndarray, levels: int) -> dict[int, np.ndarray]:
    """Two-window rate of change of ``x`` (T, D) at scales 2, 4, ... 2**levels,
    in units of its noise: each feature is scaled by the robust spread of its
    snippet-to-snippet differences (a rare step hardly moves it), and the rate
    at scale ``w`` is scaled by ``sqrt(w / 2)``, so pure noise gives rates near
    1 at every scale. Level ``l`` smooths level ``l-1`` by a box of ``2**l``
    snippets, the hierarchy of
    :class:`~driftlab.platform.wtal.changepoints.ChangePointDetector` without its learned
    projection: whitening over a history that holds the drift would shrink
    exactly the direction the drift moves along."""
    d = np.diff(x, axis=0)
    noise = 1.4826 * np.median(np.abs(d - np.median(d, axis=0)), axis=0) / np.sqrt(2)
    noise = np.maximum(noise, NOISE_FLOOR)
    z = (x - np.median(x, axis=0)) / noise
    out = {}
    for level in range(1, levels + 1):
        w = 2 ** level
        z = box_smooth(z, w)
        out[w] = change_rate(z, w) * np.sqrt(w / 2)
    return out
