"""What Ray Tune searches, and how a trial is scored (pure: no Ray here).

EdgeSync (seed 1) tunes its training manager's hyperparameters offline with
Bayesian optimisation; :data:`SEARCH_SPACE` is the filter and schedule part of
:class:`~driftlab.platform.config.EdgeSyncParams` and the camera's BatchNorm
refit (:class:`~driftlab.platform.config.RefitParams`) we search, and
:func:`accuracy_by_window` scores a configuration on several drift scenarios
at once, window by window, so an early-stopping scheduler can cut a bad trial
after its first windows.
"""
from __future__ import annotations

from typing import Any, Iterator

from .config import SimConfig, config_from_dict
from .sim import Fleet, inline_simulation

__all__ = ["SEARCH_SPACE", "nest", "with_params", "accuracy_by_window"]

# "section.field" -> (kind, *arguments): "loguniform"/"uniform" (low, high), "choice" (options).
SEARCH_SPACE: dict[str, tuple] = {
    "edgesync.tau": ("loguniform", 30.0, 600.0),        # timeliness decay of sample weights
    "edgesync.w_conf": ("uniform", 0.0, 2.0),           # filter: low student confidence
    "edgesync.w_time": ("uniform", 0.0, 2.0),           # filter: recency
    "edgesync.w_novel": ("uniform", 0.0, 2.0),          # filter: a rising predicted class
    "edgesync.period": ("choice", [10.0, 20.0, 30.0, 60.0]),   # upload / request window
    "edgesync.horizon": ("choice", [120.0, 240.0, 480.0]),     # oldest sample a job uses
    "edgesync.max_epochs": ("choice", [1, 2, 3, 4]),
    "edgesync.patience": ("choice", [0, 1, 2]),         # online early stopping
    "edgesync.skip_accuracy": ("uniform", 0.8, 1.0),    # no job above this estimated accuracy
    "edgesync.home_distance": ("uniform", 0.0, 0.15),   # no job while a camera has not drifted (0: off)
    "edgesync.w_drift": ("uniform", 0.0, 2.0),          # priority: estimated accuracy gap
    "edgesync.w_mix": ("uniform", 0.0, 2.0),            # priority: class-mix shift
    "edgesync.w_stale": ("uniform", 0.0, 1.0),          # priority: time since last update
    "refit.layers": ("choice", [0, 3, 9, 15]),          # camera refits its shallow BatchNorm statistics
    "refit.window": ("choice", [20.0, 60.0, 120.0]),    # ... to its last seconds of frames
    "refit.max_window": ("choice", [60.0, 120.0, 240.0]),  # ... or more, while the condition holds
    "refit.home_distance": ("uniform", 0.0, 0.15),      # ... once it has left its initial condition
}


def nest(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"section.field": value}`` -> ``{"section": {"field": value}}`` (a config's shape)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def with_params(cfg: SimConfig, params: dict[str, Any]) -> SimConfig:
    """``cfg`` with the searched hyperparameters in ``params`` (keys as in :data:`SEARCH_SPACE`)."""
    return config_from_dict(nest(params), cfg)


def accuracy_by_window(cfgs: list[SimConfig], fleets: list[Fleet], strategy: str = "edgesync",
                       every: float = 60.0) -> Iterator[float]:
    """Run ``strategy`` on every (config, fleet) in lockstep and yield the mean
    frame accuracy so far, over all of them, after each ``every`` stream seconds
    (and once at the end)."""
    correct = total = 0
    t = reported = 0.0
    for ticks in zip(*(inline_simulation(c, strategy, f) for c, f in zip(cfgs, fleets))):
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
