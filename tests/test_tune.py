"""A tiny Ray Tune search end to end; its best config is one drift_sim.py loads."""
import pathlib
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from driftlab.platform.config import config_from_dict, config_to_dict, load_config
from driftlab.platform.runner import run_inline
from driftlab.platform.tuning import SEARCH_SPACE, accuracy_by_window, nest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_accuracy_by_window_reports_each_window(tiny_cfg):
    from driftlab.platform.runner import build_fleet

    cfgs = [tiny_cfg(scenario="day_night"), tiny_cfg(scenario="weather", seed=1)]
    fleets = [build_fleet(c, log=lambda *_: None) for c in cfgs]
    accs = list(accuracy_by_window(cfgs, fleets, every=40.0))
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)
    # The last report is the mean over both scenarios' whole runs.
    runs = [run_inline(config_from_dict({"strategies": ["edgesync"]}, c), progress=False,
                       log=lambda *_: None, fleet=f) for c, f in zip(cfgs, fleets)]
    assert accs[-1] == pytest.approx(sum(r.accuracy.iloc[0] for r in runs) / 2, abs=1e-9)


@pytest.mark.slow
def test_tiny_search_writes_a_config_drift_sim_loads(tiny_cfg, tmp_path):
    base = tmp_path / "base.yaml"
    d = config_to_dict(tiny_cfg())
    d.pop("strategies")
    base.write_text(yaml.safe_dump(d))
    out = tmp_path / "tune"
    res = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "tune_drift.py"), "--config", str(base),
         "--trials", "2", "--scenarios", "day_night", "--seeds", "0", "--heldout-scenarios", "weather",
         "--heldout-seeds", "1", "--duration", "80", "--concurrency", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and trials.accuracy.between(0, 1).all()
    held = pd.read_parquet(out / "heldout.parquet")
    assert set(held.set) == {"search", "held-out"} and {"default", "tuned", "gain"} <= set(held.columns)
    assert (out / "search.png").stat().st_size > 0
    tuned = yaml.safe_load((out / "best.yaml").read_text())
    assert tuned.keys() == nest(SEARCH_SPACE).keys() and all(
        tuned[section].keys() == fields.keys() for section, fields in nest(SEARCH_SPACE).items())
    best = load_config(str(out / "best.yaml"), tiny_cfg())  # what drift_sim.py --config does
    assert all(getattr(getattr(best, section), k) == v for section, fields in tuned.items()
               for k, v in fields.items())
    summary = run_inline(config_from_dict({"strategies": ["edgesync"], "duration": 40.0}, best),
                         progress=False, log=lambda *_: None)
    assert 0.0 <= summary.accuracy.iloc[0] <= 1.0


def test_bad_tune_input_is_one_clear_message():
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "tune_drift.py"),
                          "--scenarios", "volcano"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown scenario 'volcano'" in res.stderr
    assert "Traceback" not in res.stderr
