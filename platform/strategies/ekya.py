"""Ekya (Bhardwaj et al., "Ekya: Continuous Learning of Video Analytics Models
on Edge Compute Servers", NSDI'22) as a training manager; its cameras upload
uniformly every window (the default :class:`CameraPolicy`).

Each retraining window, a micro-profiler trains every candidate configuration
briefly on a tenth of the window's data, fits ``1 - (1/(b0*x + b1) + b2)`` to
its accuracy curve under the authors' prior and extrapolates; a "thief" scheduler then splits the GPUs among the cameras'
jobs, each stealing ``steal_step`` of the GPU at a time while the
window-averaged accuracy improves, and picks each job's configuration for its
share. Profiling is charged to the GPUs like any job.
"""
from __future__ import annotations

import numpy as np

from ..scheduling import Job, Request
from .base import CameraPolicy, Profiler, TrainingManager, job_seed, latest_per_camera
from .registry import register_strategy

__all__ = ["EKYA_CONFIG", "EkyaManager", "extrapolate", "optimus"]

# Ekya's constants: from the paper (P: Bhardwaj et al., NSDI'22) and the
# authors' code (C: github.com/edge-video-services/ekya, ThiefScheduler's
# defaults in ekya/schedulers/thief_scheduler.py, DEFAULT_SCALED_OPTIMUS_ARGS
# in ekya/microprofilers/modelling_funcs.py). Where this regime forces a
# deviation it is said beside the constant; docs/methods/baselines.md has the
# measurements.
EKYA_CONFIG = {
    "epochs": (5, 15, 30),             # C: profiling_epochs=[5, 15, 30]
    "data_fraction": (0.1, 0.5, 1.0),  # P: the data-subsampling knob
    "layers": ("head", "all"),         # C: last_layer_only True / False
    "profile_epochs": 5,               # C: microprofile_epochs=5
    "profile_fraction": 0.1,           # C: microprofile_subsample_rate=0.1 ...
    "profile_min_samples": 8,          # ... but at least 8 frames: a 60-s window here holds
                                       # ~24 labelled frames per camera, 10 % of it is 2
    "steal_step": 0.1,                 # P, C: steal_increment=0.1
    "prior_end_accuracy": 0.95,        # C: end_acc, the accuracy the prior curve reaches ...
    "prior_end_epochs": 30,            # C: ... after end_epochs
    "prior_weight": 2,                 # C: weight, points drawn from the prior curve
    "profile_expectation": 0.95,       # C: microprofile_expectation_factor
}


class EkyaManager(TrainingManager):
    """Plans each window's jobs together once every camera's labels are in:
    profile, split the GPUs with the thief, configure each job for its share."""

    epoch_options = EKYA_CONFIG["epochs"]
    fraction_options = EKYA_CONFIG["data_fraction"]
    layer_options = EKYA_CONFIG["layers"]
    profile_epochs = EKYA_CONFIG["profile_epochs"]
    profile_fraction = EKYA_CONFIG["profile_fraction"]
    profile_min_samples = EKYA_CONFIG["profile_min_samples"]
    step = EKYA_CONFIG["steal_step"]

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        ready = self._ready(now)
        if not ready or len(ready) < len(self.pending):
            return []  # plan the window's jobs together, once all labels are in
        latest = latest_per_camera(ready)
        self._take(ready)
        reqs = [latest[c] for c in sorted(latest)]
        W, gpus, cost = self.cfg.window, self.cfg.server_gpus, self.cfg.costs.train_s_per_sample_epoch
        options, overheads, now_acc = [], [], []
        for r in reqs:
            opts, spent, acc = self._profile(r, server)
            options.append(opts)
            overheads.append(spent * cost)
            now_acc.append(acc)
        shares = self._thief(now_acc, options, W, gpus)
        jobs = []
        for r, acc, opts, share, overhead in zip(reqs, now_acc, options, shares, overheads):
            best = self._best(acc, opts, share, W, gpus)
            if best is None:
                continue
            epochs, frac, layers, _, _ = best
            spec = self.spec(epochs=epochs, layers=layers, seed=job_seed(self.cfg, r))
            jobs.append(Job(r, spec, since=r.cutoff - W, data_fraction=frac, share=share,
                            overhead_s=overhead))
        return jobs

    def _profile(self, r: Request, server: Profiler) -> tuple[list[tuple], int, float]:
        """Candidate configs as (epochs, fraction, layers, predicted acc, work
        GPU-s), the trials' sample-epochs, and the current model's accuracy
        (measured by the profile, else the camera's estimate)."""
        n = server.num_samples(r.camera, r.cutoff - self.cfg.window, r.cutoff)
        cost = self.cfg.costs.train_s_per_sample_epoch
        opts, spent, now_acc = [], 0, r.est_accuracy
        for layers in self.layer_options:
            curve, trial_cost = server.profile(r.camera, r.cutoff - self.cfg.window, r.cutoff, layers,
                                               self.profile_epochs, self.profile_fraction,
                                               self.profile_min_samples)
            spent += trial_cost
            if not curve:
                continue
            now_acc = curve[0]
            # x is epochs of the whole window's data (sample visits / n): a
            # profiled epoch on a part of the window sits at that part.
            step = trial_cost / ((len(curve) - 1) * n)
            for frac in self.fraction_options:
                for epochs in self.epoch_options:
                    acc = extrapolate(curve, epochs * frac, step=step)
                    opts.append((epochs, frac, layers, acc, epochs * frac * n * cost))
        return opts, spent, now_acc

    def _best(self, now_acc: float, opts: list[tuple], share: float, W: float, gpus: float):
        """The config maximising accuracy averaged over the window at ``share``."""
        best, best_acc = None, now_acc
        for o in opts:
            acc = _window_accuracy(now_acc, o[3], o[4], share * gpus, W)
            if acc > best_acc + 1e-9:
                best, best_acc = o, acc
        return best

    def _value(self, now_acc, opts, share, W, gpus) -> float:
        best = self._best(now_acc, opts, share, W, gpus)
        return now_acc if best is None else _window_accuracy(now_acc, best[3], best[4], share * gpus, W)

    def _thief(self, now_acc, options, W, gpus) -> list[float]:
        n = len(now_acc)
        shares = [1.0 / n] * n
        values = [self._value(a, o, s, W, gpus) for a, o, s in zip(now_acc, options, shares)]
        improved = True
        while improved:
            improved = False
            for i in range(n):          # thief
                for j in range(n):      # victim
                    if i == j or shares[j] < self.step - 1e-9:
                        continue
                    si, sj = shares[i] + self.step, shares[j] - self.step
                    vi = self._value(now_acc[i], options[i], si, W, gpus)
                    vj = self._value(now_acc[j], options[j], sj, W, gpus)
                    if vi + vj > values[i] + values[j] + 1e-6:
                        shares[i], shares[j], values[i], values[j] = si, sj, vi, vj
                        improved = True
        return shares


def _window_accuracy(acc_now: float, acc_after: float, work: float, gpus: float, W: float) -> float:
    """Accuracy averaged over a window in which a job of ``work`` GPU-s runs on
    ``gpus`` GPUs: the old model until it finishes, the new one after."""
    if gpus <= 0:
        return acc_now
    d = work / gpus
    if d >= W:
        return acc_now
    return (acc_now * d + acc_after * (W - d)) / W


def optimus(x, b0: float, b1: float, b2: float):
    """Ekya's (and Optimus's) accuracy curve ``1 - (1/(b0*x + b1) + b2)``."""
    return 1.0 - (1.0 / (b0 * np.asarray(x, float) + b1) + b2)


_B0 = np.geomspace(0.01, 10.0, 31)
_B1 = np.geomspace(1.0, 50.0, 31)


def _fit(xs, ys) -> tuple[float, float, float]:
    """Least-squares :func:`optimus` parameters: a grid over ``b0``, ``b1``
    (``b1 >= 1``: ``1/(b0*x + b1) <= 1``), ``b2`` in closed form. The authors
    fit with scipy's ``curve_fit``; with two points (the prior) many curves
    fit exactly and the grid picks one of them, so predictions between the
    ends depend on the grid (not compared with scipy's here)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    base = 1.0 - 1.0 / (_B0[:, None, None] * xs + _B1[None, :, None])  # (b0, b1, point)
    b2 = np.mean(base - ys, axis=-1)
    err = np.sum((base - b2[..., None] - ys) ** 2, axis=-1)
    i, j = np.unravel_index(np.argmin(err), err.shape)
    return float(_B0[i]), float(_B1[j]), float(b2[i, j])


def extrapolate(curve: list[float], x: float, step: float = 1.0,
                end_accuracy: float = EKYA_CONFIG["prior_end_accuracy"],
                end_epochs: float = EKYA_CONFIG["prior_end_epochs"], weight: int = EKYA_CONFIG["prior_weight"],
                expectation: float = EKYA_CONFIG["profile_expectation"]) -> float:
    """Accuracy after ``x`` epochs predicted from a micro-profile, as the
    authors' ``get_scaled_optimus_fn``: a prior curve from ``curve[0]`` (the
    accuracy before training) to ``end_accuracy`` at ``end_epochs``, its end
    scaled down by how far the profiled points (``curve[1:]``, at ``step``,
    ``2 * step``, ...) fall below it (times ``expectation``), then
    :func:`optimus` fitted to the profile plus ``weight + 2`` points of the
    scaled prior.

    Args:
        curve: validation accuracy before and after each profiled epoch, in [0, 1].
        x: epochs (sample visits in units of the window's data) to predict for.
        step: the window epochs one profiled epoch is worth: the share of the
            window's samples the profile trained on (the authors' code takes 1
            whatever its subsample).
    Returns:
        the predicted accuracy, in [0, 1].
    """
    ys = np.asarray(curve, float)
    xs = np.arange(len(ys), dtype=float) * step
    start = float(ys[0])
    prior = _fit([0.0, end_epochs], [start, end_accuracy])
    expected = optimus(xs[1:], *prior) * expectation
    scale = min(float(np.mean(ys[1:] / np.maximum(expected, 1e-6))), 1.0) if len(ys) > 1 else 1.0
    prior = _fit([0.0, end_epochs], [start, end_accuracy * scale])
    boost_x = np.linspace(0.0, end_epochs, weight + 2)
    fitted = _fit(np.concatenate([boost_x, [0.0, end_epochs], xs[1:]]),
                  np.concatenate([optimus(boost_x, *prior), [start, end_accuracy * scale], ys[1:]]))
    return float(np.clip(optimus(x, *fitted), 0.0, 1.0))


register_strategy("ekya", CameraPolicy, EkyaManager)
