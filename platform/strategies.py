"""Adaptation strategies: each is a sample filter plus a training manager.

All strategies get the same bandwidth budget (``upload_fraction`` of frames), the
same teacher and the same server GPUs; they differ only in which frames they
upload, which jobs they run, in what order, and for how long. Add one with
``@register_strategy("name")`` on a :class:`Strategy` subclass.

Any adapting strategy also runs with the change-point trigger as
``<name>+cp`` (seed 3's detector, :mod:`driftlab.platform.drift`): its cameras
upload and ask for retraining when their feature stream shows a change point,
and every period for a while after it, instead of every period.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

from .config import SimConfig
from .drift import DriftDetector
from .filters import Candidates, edgesync_filter, uniform_filter
from .models import Recalibration
from .scheduling import Job, Request

__all__ = ["Strategy", "STRATEGIES", "register_strategy", "build_strategy", "check_strategy",
           "Profiler", "CHANGEPOINT_SUFFIX"]

STRATEGIES: dict[str, type["Strategy"]] = {}
CHANGEPOINT_SUFFIX = "+cp"


def register_strategy(name: str) -> Callable[[type["Strategy"]], type["Strategy"]]:
    """Class decorator adding a strategy to the registry under ``name``."""
    def wrap(cls: type["Strategy"]) -> type["Strategy"]:
        cls.name = name
        STRATEGIES[name] = cls
        return cls
    return wrap


def check_strategy(name: str) -> tuple[type["Strategy"], bool]:
    """The strategy class ``name`` names and whether it has the change-point
    trigger; a clear ``ValueError`` for a name that is neither."""
    base = name.removesuffix(CHANGEPOINT_SUFFIX)
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from: {', '.join(STRATEGIES)} "
                         f"(add {CHANGEPOINT_SUFFIX} to one for the change-point trigger)")
    triggered = base != name
    if triggered and not STRATEGIES[base].adapts:
        raise ValueError(f"strategy {name!r}: {base} never retrains, so it has nothing to trigger")
    return STRATEGIES[base], triggered


def build_strategy(name: str, cfg: SimConfig) -> "Strategy":
    cls, triggered = check_strategy(name)
    strategy = cls(cfg)
    if triggered:
        strategy.name, strategy.changepoint = name, True
    return strategy


class Profiler(Protocol):
    """What a manager may ask of the server while planning (Ekya's micro-profiler)."""

    def profile(self, camera: int, since: float, until: float, layers: str,
                epochs: int) -> tuple[list[float], int]:
        """Validation accuracy after each of ``epochs`` epochs of a trial run,
        and the sample-epochs that trial cost."""
        ...

    def num_samples(self, camera: int, since: float, until: float) -> int: ...


class Strategy:
    """Base strategy: uniform sampling each window, no training."""

    name = "base"
    adapts = True
    changepoint = False  # the change-point trigger (``<name>+cp``)

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.pending: list[Request] = []

    def period(self) -> float:
        """Seconds between a camera's uploads (and retraining requests)."""
        return self.cfg.window

    def drift_detector(self) -> DriftDetector | None:
        """A camera's detector under the change-point trigger, else ``None``."""
        return DriftDetector(self.cfg.changepoint) if self.changepoint else None

    def recalibration(self) -> Recalibration:
        """How each camera refits its model's shallow BatchNorm statistics to
        its own frames (by default, never)."""
        return Recalibration()

    def reads_condition(self) -> bool:
        """Whether the manager reads ``Request.condition``, the scene summary a
        camera then computes over every frame of each period."""
        return False

    def budget(self, camera: int, num_frames: int) -> int:
        return int(round(self.cfg.upload_fraction * num_frames))

    def select(self, camera: int, cands: Candidates, budget: int, now: float,
               rng: np.random.Generator) -> np.ndarray:
        return uniform_filter(cands, budget, rng)

    def observe_labels(self, camera: int, labels: np.ndarray) -> None:
        """Teacher labels of the latest upload (AMS adapts its sampling rate)."""

    def submit(self, request: Request) -> None:
        self.pending.append(request)

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        """Jobs to start at ``now`` (the GPUs are free); may drop stale requests."""
        return []

    def _ready(self, now: float) -> list[Request]:
        return [r for r in self.pending if r.ready <= now]

    def _take(self, requests: list[Request]) -> None:
        ids = {id(r) for r in requests}
        self.pending = [r for r in self.pending if id(r) not in ids]


@register_strategy("static")
class Static(Strategy):
    """Never adapts: the camera keeps its initial student (the "traditional" reference)."""

    adapts = False

    def budget(self, camera: int, num_frames: int) -> int:
        return 0


@register_strategy("periodic")
class Periodic(Strategy):
    """Uniform sampling; every window, retrain on that window's uploads for a fixed
    number of epochs; jobs run first come, first served."""

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        ready = self._ready(now)
        if not ready:
            return []
        first = min(ready, key=lambda r: (r.cutoff, r.camera))
        self._take([first])
        spec = self.cfg.train_spec(epochs=self.cfg.fixed_epochs, seed=_job_seed(self.cfg, first))
        return [Job(first, spec, since=first.cutoff - self.cfg.window)]


@register_strategy("ams")
class AMS(Strategy):
    """AMS-style (Khani et al., ICCV'21): the server fine-tunes its copy of each
    camera's student every ``period`` on the last ``horizon`` seconds of sampled
    frames, a short update, and ships only the ``update_fraction`` of parameters
    with the largest gradients. The sampling rate adapts to scene change:
    ``rate -= 0.2 * tanh(20 * (phi - 0.6))``, clipped to [0.1, 1], where ``phi`` is
    the agreement of consecutive teacher labels."""

    update_period = 20.0
    horizon = 240.0
    epochs = 2
    update_fraction = 0.2

    def __init__(self, cfg: SimConfig):
        super().__init__(cfg)
        self.rate: dict[int, float] = {}

    def period(self) -> float:
        return _whole_ticks(self.update_period, self.cfg.tick)

    def budget(self, camera: int, num_frames: int) -> int:
        return int(round(self.rate.get(camera, 1.0) * self.cfg.upload_fraction * num_frames))

    def observe_labels(self, camera: int, labels: np.ndarray) -> None:
        if len(labels) < 2:
            return
        phi = float((labels[1:] == labels[:-1]).mean())
        rate = self.rate.get(camera, 1.0) - 0.2 * math.tanh(20 * (phi - 0.6))
        self.rate[camera] = float(np.clip(rate, 0.1, 1.0))

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        ready = self._ready(now)
        if not ready:
            return []
        first = min(ready, key=lambda r: (r.cutoff, r.camera))
        # A newer request of the same camera supersedes older ones: its horizon
        # covers their samples.
        same = [r for r in ready if r.camera == first.camera]
        newest = max(same, key=lambda r: r.cutoff)
        self._take(same)
        spec = self.cfg.train_spec(epochs=self.epochs, seed=_job_seed(self.cfg, newest))
        return [Job(newest, spec, since=newest.cutoff - self.horizon,
                    update_fraction=self.update_fraction)]


@register_strategy("ekya")
class Ekya(Strategy):
    """Ekya-style (Bhardwaj et al., NSDI'22). Each window, a micro-profiler trains
    every candidate configuration briefly, fits ``1 - (1/(b0*x + b1) + b2)`` to its
    accuracy curve and extrapolates; a "thief" scheduler then splits the GPUs
    among the cameras' jobs, each job stealing 0.1 GPU at a time while the
    window-averaged accuracy improves, and picks each job's configuration for
    its share. Profiling is charged to the GPUs like any job."""

    epoch_options = (5, 10, 20)
    fraction_options = (0.5, 1.0)
    layer_options = ("head", "all")
    profile_epochs = 3
    step = 0.1

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        ready = self._ready(now)
        if not ready or len(ready) < len(self.pending):
            return []  # plan the window's jobs together, once all labels are in
        latest = _latest_per_camera(ready)
        self._take(ready)
        reqs = [latest[c] for c in sorted(latest)]
        W, gpus, cost = self.cfg.window, self.cfg.server_gpus, self.cfg.costs.train_s_per_sample_epoch
        options, overheads = [], []
        for r in reqs:
            opts, spent = self._profile(r, server)
            options.append(opts)
            overheads.append(spent * cost)
        shares = self._thief(reqs, options, W, gpus)
        jobs = []
        for r, opts, share, overhead in zip(reqs, options, shares, overheads):
            best = self._best(r, opts, share, W, gpus)
            if best is None:
                continue
            epochs, frac, layers, _, _ = best
            spec = self.cfg.train_spec(epochs=epochs, layers=layers, seed=_job_seed(self.cfg, r))
            jobs.append(Job(r, spec, since=r.cutoff - W, data_fraction=frac, share=share,
                            overhead_s=overhead))
        return jobs

    def _profile(self, r: Request, server: Profiler) -> tuple[list[tuple], int]:
        """Candidate configs as (epochs, fraction, layers, predicted acc, work GPU-s)."""
        n = server.num_samples(r.camera, r.cutoff - self.cfg.window, r.cutoff)
        cost = self.cfg.costs.train_s_per_sample_epoch
        opts, spent = [], 0
        for layers in self.layer_options:
            curve, trial_cost = server.profile(r.camera, r.cutoff - self.cfg.window, r.cutoff,
                                               layers, self.profile_epochs)
            spent += trial_cost
            if not curve:
                continue
            for frac in self.fraction_options:
                for epochs in self.epoch_options:
                    # Runtime linear in epochs and data; accuracy extrapolated in
                    # sample-visits (epochs x fraction) from the profiled curve.
                    acc = _extrapolate(curve, epochs * frac)
                    opts.append((epochs, frac, layers, acc, epochs * frac * n * cost))
        return opts, spent

    def _best(self, r: Request, opts: list[tuple], share: float, W: float, gpus: float):
        """The config maximising accuracy averaged over the window at ``share``."""
        best, best_acc = None, r.est_accuracy
        for o in opts:
            acc = _window_accuracy(r.est_accuracy, o[3], o[4], share * gpus, W)
            if acc > best_acc + 1e-9:
                best, best_acc = o, acc
        return best

    def _value(self, r, opts, share, W, gpus) -> float:
        best = self._best(r, opts, share, W, gpus)
        return r.est_accuracy if best is None else _window_accuracy(
            r.est_accuracy, best[3], best[4], share * gpus, W)

    def _thief(self, reqs, options, W, gpus) -> list[float]:
        n = len(reqs)
        shares = [1.0 / n] * n
        values = [self._value(r, o, s, W, gpus) for r, o, s in zip(reqs, options, shares)]
        improved = True
        while improved:
            improved = False
            for i in range(n):          # thief
                for j in range(n):      # victim
                    if i == j or shares[j] < self.step - 1e-9:
                        continue
                    si, sj = shares[i] + self.step, shares[j] - self.step
                    vi = self._value(reqs[i], options[i], si, W, gpus)
                    vj = self._value(reqs[j], options[j], sj, W, gpus)
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


def _extrapolate(curve: list[float], x: float) -> float:
    """Fit Ekya's ``1 - (1/(b0*x + b1) + b2)`` to ``curve`` (accuracy after epochs
    1..k) by least squares over a small grid, and evaluate it at ``x``."""
    xs = np.arange(1, len(curve) + 1, dtype=float)
    ys = np.asarray(curve, float)
    best, best_err = None, float("inf")
    for b0 in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0):
        for b1 in (0.5, 1.0, 1.5, 2.0, 3.0, 5.0):
            base = 1.0 - 1.0 / (b0 * xs + b1)
            b2 = float(np.mean(base - ys))  # closed-form offset for this (b0, b1)
            err = float(np.sum((base - b2 - ys) ** 2))
            if err < best_err:
                best, best_err = (b0, b1, b2), err
    b0, b1, b2 = best
    return float(np.clip(1.0 - (1.0 / (b0 * x + b1) + b2), 0.0, 1.0))


@register_strategy("edgesync")
class EdgeSync(Strategy):
    """EdgeSync (seed 1). Filter: frames scored by timeliness and inference
    results (low confidence, a rising predicted class). Training manager: at run
    time, whenever the GPUs free up, start the most urgent camera's job (priority
    from its estimated accuracy gap, the shift of its class mix and its
    staleness), merge a camera's stale requests into its newest, skip cameras
    that are accurate enough or have not drifted from the condition their
    initial model was fit to, and size each job by online early stopping.
    Samples are weighted by timeliness ``exp(-age / tau)``. Cameras refit
    their model's shallow BatchNorm statistics to their latest frames
    (``bn_layers``, ``bn_window``, ``bn_max_window``) once they have drifted."""

    def __init__(self, cfg: SimConfig):
        super().__init__(cfg)
        self.home: dict[int, np.ndarray] = {}  # each camera's first upload's condition
        self.retrained: set[int] = set()

    def period(self) -> float:
        return _whole_ticks(self.cfg.edgesync.period, self.cfg.tick)

    def select(self, camera: int, cands: Candidates, budget: int, now: float,
               rng: np.random.Generator) -> np.ndarray:
        p = self.cfg.edgesync
        min_gap = max(1, int(self.cfg.world.object_seconds * self.cfg.world.fps / 2))
        return edgesync_filter(cands, budget, now, p.tau, p.w_conf, p.w_time, p.w_novel, min_gap)

    def priority(self, r: Request, now: float) -> float:
        p = self.cfg.edgesync
        return (p.w_drift * (1.0 - r.est_accuracy) + p.w_mix * r.mix_shift
                + p.w_stale * (now - r.last_update) / self.cfg.window)

    def submit(self, request: Request) -> None:
        if request.condition is not None:
            self.home.setdefault(request.camera, request.condition)
        super().submit(request)

    def recalibration(self) -> Recalibration:
        p = self.cfg.edgesync
        return Recalibration(p.bn_layers, p.bn_window, 0.0 if self.changepoint else p.home_distance,
                             max_window=p.bn_max_window, same_distance=p.home_distance)

    def reads_condition(self) -> bool:
        """For ``home_distance``; off under the change-point trigger, whose first
        upload comes after a change and which decides itself when a camera has drifted."""
        return self.cfg.edgesync.home_distance > 0 and not self.changepoint

    def at_home(self, r: Request) -> bool:
        """Whether camera ``r.camera`` still runs its initial model in the
        condition that model was fit to (its first upload's, within
        ``home_distance``): it has not drifted, and retraining it there costs accuracy."""
        return (self.reads_condition() and r.camera not in self.retrained and r.condition is not None
                and float(np.linalg.norm(r.condition - self.home[r.camera])) < self.cfg.edgesync.home_distance)

    def next_batch(self, now: float, server: Profiler) -> list[Job]:
        p = self.cfg.edgesync
        ready = self._ready(now)
        latest = _latest_per_camera(ready)
        for cam, r in list(latest.items()):
            if r.est_accuracy >= p.skip_accuracy or self.at_home(r):
                self._take([q for q in ready if q.camera == cam])
                del latest[cam]
        if not latest:
            return []
        best = max(latest.values(), key=lambda r: (self.priority(r, now), -r.camera))
        self._take([q for q in ready if q.camera == best.camera])
        self.retrained.add(best.camera)
        spec = self.cfg.train_spec(epochs=p.max_epochs, patience=p.patience, seed=_job_seed(self.cfg, best))
        return [Job(best, spec, since=best.cutoff - p.horizon, tau=p.tau)]


def _latest_per_camera(requests: list[Request]) -> dict[int, Request]:
    """Each camera's newest request: it supersedes the older ones (its samples
    include theirs)."""
    latest: dict[int, Request] = {}
    for r in requests:
        if r.camera not in latest or r.cutoff > latest[r.camera].cutoff:
            latest[r.camera] = r
    return latest


def _whole_ticks(period: float, tick: float) -> float:
    """``period`` rounded down to whole ticks (at least one)."""
    return max(tick, period - period % tick)


def _job_seed(cfg: SimConfig, r: Request) -> int:
    return (cfg.seed * 1_000_003 + r.camera * 10_007 + int(round(r.cutoff * 10))) % (2**31)
