"""drift_sim.py: bad input gives one clear message and a non-zero exit."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "drift_sim.py"), *args],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args,message", [
    (["--strategies", "static,nope"], "unknown strategy 'nope'"),
    (["--scenario", "volcano"], "unknown scenario 'volcano'"),
    (["--distill", "genkd"], "unknown distill 'genkd'"),
    (["--cameras", "0"], "cameras must be a positive number"),
    (["--duration", "-5"], "duration must be a positive number"),
    (["--config", "/nonexistent/cfg.yaml"], "config file not found"),
    (["--source", "/nonexistent/video.mp4"], "video file not found: /nonexistent/video.mp4"),
])
def test_bad_input_is_one_clear_message(args, message):
    out = run(*args, "--no-progress")
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [1, 2\n")
    out = run("--config", str(bad))
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("camras: 3\n")
    out = run("--config", str(unknown))
    assert out.returncode == 2 and "unknown config field(s): camras" in out.stderr
    typed = tmp_path / "typed.yaml"
    typed.write_text("edgesync:\n  tau: fast\n")
    out = run("--config", str(typed))
    assert out.returncode == 2 and "edgesync.tau must be a number" in out.stderr


def test_gpus_asked_of_a_machine_without_them():
    out = run("--gpus-per-camera", "0.5", "--cameras", "2", "--no-progress")
    assert out.returncode == 2
    assert "needs 1 GPUs but the Ray cluster has 0" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
