"""experiments/chaos.py, small: a local 2-node cluster loses its worker node,
a teacher replica, a Train worker and a camera group mid-run, and the
comparison's summary and frame rows equal the clean run's."""
import pathlib
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from driftlab.platform.config import config_to_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_chaos_faults_change_no_number(tiny_cfg, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config_to_dict(tiny_cfg(duration=80.0))))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "chaos.py"), "--config", str(cfg),
                          "--nodes", "2", "--cameras", "2", "--duration", "80", "--strategies", "edgesync",
                          "--camera-kills", "1", "--cameras-per-actor", "1", "--out", str(tmp_path / "chaos"),
                          "--no-progress"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "chaos: 4 faults, summaries identical: True, frame rows lost: 0"
    faults = pd.read_parquet(tmp_path / "chaos" / "faults.parquet")
    assert set(faults.fault) == {"camera group", "teacher replica", "Train worker", "worker node"}
    assert faults.set_index("fault").detail["worker node"].startswith("removed node")
    frames = [pd.read_parquet(tmp_path / "chaos" / run / "frames.parquet") for run in ("clean", "faulty")]
    pd.testing.assert_frame_equal(*frames)
    assert len(frames[0]) == 2 * 80 * 2   # every camera's every frame


def test_chaos_bad_input_is_one_clear_error():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "chaos.py"), "--nodes", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "error: --nodes must be at least 2" in out.stderr and "Traceback" not in out.stderr
