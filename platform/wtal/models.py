"""Weakly supervised localization: one network, three ways to localize.

:class:`WTALNet` maps snippet features to a class activation sequence (CAS)
and a foreground attention. Trained from video-level labels only:

* ``wtalc`` (W-TALC-style baseline): multiple-instance learning, the video's
  class scores are the mean of the top-k CAS values; localization thresholds
  the CAS.
* ``basnet`` (BaS-Net-style baseline): a background class and two branches,
  the plain CAS (background labelled present) and the attention-suppressed
  CAS (background absent), plus an L1 prior on attention; localization
  thresholds the suppressed CAS.
* ``ours`` (seed 3): the same attention classifier as ``basnet``; proposals
  are the segments between consecutive *foreground* change points of the
  hierarchical latent detector, at every scale, instead of thresholds.

All proposals are scored by the outer-inner contrast of the class activation
and de-duplicated by temporal NMS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .changepoints import ChangePointDetector
from .data import Video

__all__ = ["WTALNet", "TrainConfig", "train", "localize", "METHODS", "nms"]

METHODS = ("wtalc", "basnet", "ours")


class WTALNet(nn.Module):
    """Temporal conv embedding -> CAS (K, or K+1 with a background class) and attention."""

    def __init__(self, feature_dim: int, num_classes: int, background: bool, hidden: int = 128):
        super().__init__()
        self.embed = nn.Sequential(nn.Conv1d(feature_dim, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Dropout(0.5), nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.cas = nn.Conv1d(hidden, num_classes + int(background), 1)
        self.attention = nn.Conv1d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D) -> CAS (B, T, C) and attention (B, T) in [0, 1]."""
        h = self.embed(x.transpose(1, 2))
        return self.cas(h).transpose(1, 2), torch.sigmoid(self.attention(h)).squeeze(1)


def _topk_mean(cas: torch.Tensor, k: int) -> torch.Tensor:
    """Video scores: mean of the k largest activations over time, per class."""
    return cas.topk(min(k, cas.shape[1]), dim=1).values.mean(dim=1)


def _mil_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(video scores) and the normalised labels."""
    target = labels / labels.sum(dim=1, keepdim=True)
    return -(target * scores.log_softmax(dim=1)).sum(dim=1).mean()


@dataclass
class TrainConfig:
    """Training of :class:`WTALNet` (every method uses the same)."""

    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 5e-4
    topk_divisor: int = 8      # k = T // 8, as W-TALC
    attention_l1: float = 1e-3
    seed: int = 0


def train(method: str, videos: list[Video], cfg: TrainConfig = TrainConfig()) -> WTALNet:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    K = len(videos[0].labels)
    background = method != "wtalc"
    model = WTALNet(videos[0].features.shape[1], K, background)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(videos)), max(1, len(videos) // cfg.batch_size)):
            batch = [videos[i] for i in idx]
            T = min(len(v.features) for v in batch)  # a random crop of each to a common length
            x = torch.stack([torch.from_numpy(_crop(v.features, T, rng)) for v in batch])
            y = torch.from_numpy(np.stack([v.labels for v in batch]))
            cas, att = model(x)
            k = max(1, T // cfg.topk_divisor)
            if background:
                ones, zeros = torch.ones(len(batch), 1), torch.zeros(len(batch), 1)
                base = _mil_loss(_topk_mean(cas, k), torch.cat([y, ones], 1))
                supp = _mil_loss(_topk_mean(cas * att.unsqueeze(-1), k), torch.cat([y, zeros], 1))
                loss = base + supp + cfg.attention_l1 * att.abs().mean()
            else:
                loss = _mil_loss(_topk_mean(cas, k), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _crop(x: np.ndarray, T: int, rng) -> np.ndarray:
    s = int(rng.integers(0, len(x) - T + 1))
    return x[s:s + T]


@torch.no_grad()
def activations(model: WTALNet, video: Video) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-snippet class activation (T, K) in [0, 1], attention (T,), video scores (K,)."""
    cas, att = model(torch.from_numpy(video.features)[None])
    K = len(video.labels)
    k = max(1, cas.shape[1] // TrainConfig.topk_divisor)
    if cas.shape[2] > K:  # background-aware: the suppressed CAS, background dropped
        cas = cas * att.unsqueeze(-1)
    act = cas[0].softmax(dim=1)[:, :K]
    scores = _topk_mean(cas, k)[0, :K].softmax(0)
    att = att[0]
    return act.numpy(), att.numpy(), scores.numpy()


def _oic(act: np.ndarray, s: int, e: int, margin: float = 0.25) -> float:
    """Outer-inner contrast: mean activation inside [s, e) minus around it."""
    L = e - s
    m = max(1, int(round(margin * L)))
    outer = np.r_[act[max(0, s - m):s], act[e:min(len(act), e + m)]]
    return float(act[s:e].mean() - (outer.mean() if len(outer) else 0.0))


def nms(segments: list[tuple[int, int, float]], iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Temporal non-maximum suppression of (start, end, score) segments."""
    keep: list[tuple[int, int, float]] = []
    for s, e, sc in sorted(segments, key=lambda x: -x[2]):
        if all(_tiou(s, e, ks, ke) < iou for ks, ke, _ in keep):
            keep.append((s, e, sc))
    return keep


def _tiou(s, e, s2, e2) -> float:
    inter = max(0, min(e, e2) - max(s, s2))
    union = (e - s) + (e2 - s2) - inter
    return inter / union if union > 0 else 0.0


def _regions(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as [start, end)."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def localize(method: str, model: WTALNet, video: Video, detector: ChangePointDetector | None = None,
             class_threshold: float = 0.1, att_jump: float = 0.2) -> list[tuple[int, int, int, float]]:
    """Detections ``(class, start, end, score)`` in snippets for one video."""
    act, att, scores = activations(model, video)
    classes = [c for c in range(len(scores)) if scores[c] >= class_threshold * scores.max()]
    out = []
    for c in classes:
        a = act[:, c]
        if method == "ours":
            candidates = _change_point_segments(detector, video.features, a * att, att_jump)
        else:
            candidates = [seg for thr in np.linspace(0.1, 0.9, 9) for seg in _regions(_unit(a) > thr)]
        segs = [(int(s), int(e), _oic(a, s, e) + 0.2 * float(scores[c])) for s, e in set(candidates)
                if e - s >= 1]
        out += [(c, s, e, sc) for s, e, sc in nms(segs)]
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min() + 1e-8)


def _change_point_segments(detector: ChangePointDetector, x: np.ndarray, fg: np.ndarray,
                           jump: float, span: int = 4) -> list[tuple[int, int]]:
    """Proposals between foreground change points, over all scales.

    ``fg`` is the attention-weighted class activation, scaled to [0, 1] per
    video. A change point (of any scale ``w``) is a foreground boundary when
    ``fg`` over the ``w`` snippets after it differs from the ``w`` before by
    at least ``jump``. Proposals join a boundary to each of the next ``span``
    boundaries when the mean ``fg`` between them is above one half.
    """
    fg = _unit(fg)
    T = len(x)
    strength: dict[int, float] = {}
    for w, points in detector.detect(x).items():
        for p in points:
            d = abs(fg[p:min(T, p + w)].mean() - fg[max(0, p - w):p].mean())
            strength[int(p)] = max(strength.get(int(p), 0.0), d)
    bounds = sorted({0, T, *(p for p, d in strength.items() if d >= jump)})
    out = []
    for i, s in enumerate(bounds):
        for e in bounds[i + 1:i + 1 + span]:
            if fg[s:e].mean() > 0.5:
                out.append((s, e))
    return out
