"""What Ray Tune searches, and how a trial is scored (pure: no Ray here).

EdgeSync (seed 1) tunes its training manager's hyperparameters offline with
Bayesian optimisation; :data:`SEARCH_SPACE` is the filter and schedule part of
:class:`~driftlab.platform.config.EdgeSyncParams` we search, and
:func:`accuracy_by_window` scores a configuration on several drift scenarios
at once, window by window, so an early-stopping scheduler can cut a bad trial
after its first windows.
"""
from __future__ import annotations

from typing import Any, Iterator

from .config import SimConfig, config_from_dict
from .sim import Fleet, Simulation

__all__ = ["SEARCH_SPACE", "with_params", "accuracy_by_window"]

# name -> (kind, *arguments): "loguniform"/"uniform" (low, high), "choice" (options).
SEARCH_SPACE: dict[str, tuple] = {
    "tau": ("loguniform", 30.0, 600.0),        # timeliness decay of sample weights
    "w_conf": ("uniform", 0.0, 2.0),           # filter: low student confidence
    "w_time": ("uniform", 0.0, 2.0),           # filter: recency
    "w_novel": ("uniform", 0.0, 2.0),          # filter: a rising predicted class
    "period": ("choice", [10.0, 20.0, 30.0, 60.0]),   # upload / request window
    "horizon": ("choice", [120.0, 240.0, 480.0]),     # oldest sample a job uses
    "max_epochs": ("choice", [1, 2, 3, 4]),
    "patience": ("choice", [0, 1, 2]),         # online early stopping
    "skip_accuracy": ("uniform", 0.8, 1.0),    # no job above this estimated accuracy
    "home_distance": ("uniform", 0.0, 0.15),   # no job while a camera has not drifted (0: off)
    "bn_layers": ("choice", [0, 3, 9, 15]),    # camera refits its shallow BatchNorm statistics
    "bn_window": ("choice", [20.0, 60.0, 120.0]),  # ... to its last seconds of frames
    "bn_max_window": ("choice", [60.0, 120.0, 240.0]),  # ... or more, while the condition holds
    "w_drift": ("uniform", 0.0, 2.0),          # priority: estimated accuracy gap
    "w_mix": ("uniform", 0.0, 2.0),            # priority: class-mix shift
    "w_stale": ("uniform", 0.0, 1.0),          # priority: time since last update
}


def with_params(cfg: SimConfig, params: dict[str, Any]) -> SimConfig:
    """``cfg`` with the ``edgesync`` hyperparameters in ``params``."""
    return config_from_dict({"edgesync": dict(params)}, cfg)


def accuracy_by_window(cfgs: list[SimConfig], fleets: list[Fleet], strategy: str = "edgesync",
                       every: float = 60.0) -> Iterator[float]:
    """Run ``strategy`` on every (config, fleet) in lockstep and yield the mean
    frame accuracy so far, over all of them, after each ``every`` stream seconds
    (and once at the end)."""
    correct = total = 0
    t = reported = 0.0
    for ticks in zip(*(Simulation(c, strategy, f) for c, f in zip(cfgs, fleets))):
        for t, logs, _ in ticks:
            for log in logs:
                known = log.labels >= 0
                correct += int((log.preds[known] == log.labels[known]).sum())
                total += int(known.sum())
        if t - reported >= every - 1e-9:
            reported = t
            yield correct / max(total, 1)
    if t > reported:
        yield correct / max(total, 1)
