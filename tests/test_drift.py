"""Seed 3's change points as a camera's drift trigger (``<strategy>+cp``)."""
import numpy as np
import pandas as pd
import pytest

from driftlab.platform.adapters import ChangePointTrigger, PeriodTrigger, camera_components
from driftlab.platform.config import ConfigError, SimConfig
from driftlab.platform.drift import ChangePointParams, DriftDetector
from driftlab.platform.metrics import reaction_time
from driftlab.platform.runner import build_fleet
from driftlab.platform.sim import inline_simulation
from driftlab.platform.strategies import parse_strategies, parse_strategy


def _frames(rng, n, level):
    """Grey frames at brightness ``level`` with sensor noise and a bright
    object that wanders about: the object moves the mean, not the median."""
    x = np.clip(rng.normal(level, 0.02, (n, 16, 16, 3)), 0, 1)
    for i, (r, c) in enumerate(rng.integers(0, 12, (n, 2))):
        x[i, r:r + 4, c:c + 4] = 0.95
    return (x * 255).astype(np.uint8)


def _play(levels: list[float], fps: float = 2.0, tick: float = 10.0, **params) -> DriftDetector:
    """Feed a stream whose brightness is ``levels[k]`` during tick ``k``."""
    rng = np.random.default_rng(0)
    det = DriftDetector(ChangePointParams(**params))
    per_tick = int(tick * fps)
    for k, level in enumerate(levels):
        times = (k * per_tick + np.arange(per_tick)) / fps
        det.observe(times, _frames(rng, per_tick, level), np.full(per_tick, 0.9), (k + 1) * tick)
    return det


def test_detector_finds_a_lighting_step_soon_and_nothing_in_a_steady_stream():
    det = _play([0.6] * 15 + [0.3] * 10)             # the light drops at t = 150 s
    assert len(det.changes) == 1
    assert abs(det.changes[0] - 150) <= 4            # placed at the step ...
    assert det.detected_at[0] - 150 <= 20            # ... and found within two ticks
    assert _play([0.6] * 25).changes == []           # moving objects alone are not drift
    # A step before the detector has seen min_snippets is not reported late.
    late = _play([0.6] * 5 + [0.3] * 20, min_snippets=40)
    assert late.changes == []


def test_trigger_uploads_at_a_change_and_every_period_during_the_hold():
    det = DriftDetector(ChangePointParams(hold=60.0))
    assert not det.wants_upload(100.0, 0.0, 20.0)    # no change yet
    det.changes, det.detected_at = [150.0], [160.0]
    assert det.wants_upload(160.0, 140.0, 20.0)      # found since the last upload
    assert not det.wants_upload(170.0, 160.0, 20.0)  # uploaded at it; period not over
    assert det.wants_upload(180.0, 160.0, 20.0)      # a period later, within the hold
    assert not det.wants_upload(220.0, 200.0, 20.0)  # the hold is over


def test_changepoint_strategies_parse_and_static_cannot_take_the_trigger():
    cfg = SimConfig(strategies=("periodic+cp", "edgesync+cp", "edgesync"))
    s = parse_strategy("edgesync+cp")
    assert s.name == "edgesync+cp" and s.changepoint
    assert isinstance(camera_components(s, cfg, 20.0)[0], ChangePointTrigger)
    assert type(camera_components(parse_strategy("edgesync"), cfg, 20.0)[0]) is PeriodTrigger
    with pytest.raises(ConfigError, match="static never retrains"):
        parse_strategies(SimConfig(strategies=("static+cp",)))
    with pytest.raises(ConfigError, match=r"unknown strategy 'nope\+cp'"):
        parse_strategies(SimConfig(strategies=("nope+cp",)))


def test_cameras_retrain_only_around_their_change_points(tiny_cfg):
    cfg = tiny_cfg(strategies=["periodic", "periodic+cp"], duration=240.0,
                   changepoint={"min_snippets": 10, "hold": 40.0})
    fleet = build_fleet(cfg, log=lambda *_: None)
    jobs = {}
    for name in cfg.strategies:
        sim = inline_simulation(cfg, name, fleet)
        jobs[name] = [j for _, _, started in sim for j in started]
    detectors = [cam.trigger.detector for cam in sim.cameras.group.cameras]
    assert any(d.changes for d in detectors), "the day_night streams drift: some camera must see it"
    hold = cfg.changepoint.hold
    for j in jobs["periodic+cp"]:
        found = detectors[j.camera]
        assert any(0 <= j.submitted - at and j.submitted - c <= hold + cfg.tick
                   for c, at in zip(found.changes, found.detected_at)), j
    assert 0 < len(jobs["periodic+cp"]) < len(jobs["periodic"])


def test_reaction_time_counts_from_each_onset_to_the_next_model():
    t = np.arange(60.0)
    frames = pd.DataFrame({
        "camera": np.repeat([0, 1], 60), "t": np.r_[t, t],
        "drifted": np.r_[(t >= 10) & (t < 20) | (t >= 40) & (t < 50), t >= 5]})
    jobs = pd.DataFrame({"camera": [0, 0], "deployed": [15.0, 60.0]})
    # Camera 0: onsets 10 and 40 wait 5 and 20 s; camera 1 never gets a model: 59 - 5.
    assert reaction_time(frames, jobs) == pytest.approx((5 + 20 + 54) / 3)
    assert np.isnan(reaction_time(frames, jobs.iloc[:0]))
