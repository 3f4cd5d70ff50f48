"""Unsupervised change points over a temporal hierarchy of latent representations.

Seed 3 (arXiv 2308.09946) finds action boundaries, without boundary labels, as
points where latent representations of the snippet-feature sequence change
fast, at several temporal scales. The model we build, and why:

* Level 0 latent: a PCA projection of snippet features, whitened, fit on the
  training videos (unsupervised; it keeps the directions the features vary
  along, dropping per-dimension noise).
* Level l (l >= 1): the level l-1 latent sequence smoothed by a box filter of
  width 2**l and projected by a PCA fit at that level: each level summarises
  twice as long a context as the one below, a pyramid of latents.
* Rate of change at level l: the distance between the mean latent of the
  ``w = 2**l`` snippets after t and of the ``w`` before t (a two-window
  detector); short-lived noise cancels at coarse levels, short actions stay
  visible at fine ones.
* Change points at level l: local maxima of the rate (within +-w) above
  median + ``threshold`` robust standard deviations of that video's rates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ChangePointDetector", "box_smooth", "change_rate", "local_peaks"]


@dataclass
class _PCA:
    mean: np.ndarray
    components: np.ndarray  # (d, D), rows scaled so projections have unit variance

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> "_PCA":
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        dim = min(dim, len(s))
        scale = s[:dim] / np.sqrt(max(len(x) - 1, 1)) + 1e-8
        return cls(mean, vt[:dim] / scale[:, None])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T


def box_smooth(z: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along time, edges reflected."""
    if width <= 1:
        return z
    pad = width // 2
    zp = np.pad(z, ((pad, width - 1 - pad), (0, 0)), mode="reflect")
    c = np.cumsum(np.concatenate([np.zeros((1, z.shape[1])), zp]), axis=0)
    return (c[width:] - c[:-width]) / width


def change_rate(z: np.ndarray, w: int) -> np.ndarray:
    """``||mean(z[t:t+w]) - mean(z[t-w:t])|| / sqrt(d)`` for each t (edges reflected)."""
    T, d = z.shape
    zp = np.pad(z, ((w, w), (0, 0)), mode="reflect") if T > w else np.pad(z, ((w, w), (0, 0)), mode="edge")
    c = np.cumsum(np.concatenate([np.zeros((1, d)), zp]), axis=0)
    t = np.arange(T) + w
    after = (c[t + w] - c[t]) / w
    before = (c[t] - c[t - w]) / w
    return np.linalg.norm(after - before, axis=1) / np.sqrt(d)


def local_peaks(rate: np.ndarray, radius: int, threshold: float) -> np.ndarray:
    """Indices of local maxima of ``rate`` within +-``radius`` that exceed
    median + ``threshold`` robust (MAD) standard deviations."""
    med = np.median(rate)
    mad = 1.4826 * np.median(np.abs(rate - med)) + 1e-12
    floor = med + threshold * mad
    padded = np.pad(rate, radius, mode="constant", constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1)
    is_max = rate >= windows.max(axis=1)
    # Of a flat top, keep the first index only.
    first = np.r_[True, rate[1:] != rate[:-1]]
    return np.flatnonzero(is_max & first & (rate > floor))


class ChangePointDetector:
    """Change points of a snippet-feature sequence at several temporal scales.

    Args:
        levels: hierarchy depth; level l uses windows of ``2**l`` snippets (l >= 1).
        latent_dim: latent size at every level.
        threshold: peak height, in robust standard deviations above the median rate.
    """

    def __init__(self, levels: int = 4, latent_dim: int = 16, threshold: float = 3.0):
        self.levels, self.latent_dim, self.threshold = levels, latent_dim, threshold
        self._pcas: list[_PCA] = []

    @property
    def scales(self) -> list[int]:
        return [2 ** l for l in range(1, self.levels + 1)]

    def fit(self, sequences: list[np.ndarray]) -> "ChangePointDetector":
        """Learn each level's latent projection from (T_i, D) feature sequences."""
        zs = [np.asarray(s, np.float64) for s in sequences]
        self._pcas = []
        for level in range(self.levels + 1):
            if level > 0:
                zs = [box_smooth(z, 2 ** level) for z in zs]
            pca = _PCA.fit(np.concatenate(zs), self.latent_dim)
            self._pcas.append(pca)
            zs = [pca(z) for z in zs]
        return self

    def latents(self, x: np.ndarray) -> list[np.ndarray]:
        """The latent sequence at levels 1..levels (each (T, latent_dim))."""
        if not self._pcas:
            raise RuntimeError("ChangePointDetector.fit must run before use")
        z = self._pcas[0](np.asarray(x, np.float64))
        out = []
        for level in range(1, self.levels + 1):
            z = self._pcas[level](box_smooth(z, 2 ** level))
            out.append(z)
        return out

    def rates(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Rate of change of the latents at each scale (window size -> (T,))."""
        return {w: change_rate(z, w) for w, z in zip(self.scales, self.latents(x))}

    def detect(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Change points (snippet indices) at each scale."""
        return {w: local_peaks(r, w, self.threshold) for w, r in self.rates(x).items()}
