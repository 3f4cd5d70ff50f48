"""drift_sim.py from the command line: bad input gives one clear message and a
non-zero exit; several seeds give each run and the table over them."""
import json
import pathlib
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from driftlab.platform.config import config_to_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "drift_sim.py"), *args],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args,message", [
    (["--strategies", "static,nope"], "unknown strategy 'nope'"),
    (["--scenario", "volcano"], "unknown scenario 'volcano'"),
    (["--distill", "hintn"], "unknown distill 'hintn'"),
    (["--cameras", "0"], "cameras must be a whole number >= 1, got 0"),
    (["--strategies", "ams+bn"], "unknown camera component 'bn'"),
    (["--duration", "-5"], "duration must be a positive number"),
    (["--config", "/nonexistent/cfg.yaml"], "config file not found"),
    (["--source", "/nonexistent/video.mp4"], "camera 0: /nonexistent/video.mp4: not found"),
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
    typed.write_text("costs:\n  genkd_factor: -1\n")
    out = run("--config", str(typed))
    assert out.returncode == 2 and "costs: genkd_factor must be a number >= 0, got -1" in out.stderr
    for text, message in [("edgesync:\n  w_stale: -0.5\n", "edgesync: w_stale must be a number >= 0, got -0.5"),
                          ("edgesync:\n  horizon: 0\n", "edgesync: horizon must be a positive number"),
                          ("borrow: 2.5\n", "borrow must be a whole number, got 2.5"),
                          ("refit:\n  layers: 2.5\n", "refit.layers must be a whole number, got 2.5"),
                          ("world:\n  size: 8\n", "world: size must be a whole number >= 16, got 8")]:
        typed.write_text(text)
        out = run("--config", str(typed))
        assert out.returncode == 2 and message in out.stderr, out.stderr


def _main(argv, capsys) -> tuple[int, str]:
    """drift_sim.py's main in this process (bad input fails before anything starts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("drift_sim", ROOT / "experiments" / "drift_sim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.err


@pytest.mark.parametrize("text,message", [
    ("cameras: 2.5", "cameras must be a whole number, got 2.5"),
    ("cameras: true", "cameras must be a whole number, got True"),
    ("world: {size: 64.0}", "world.size must be a whole number, got 64.0"),
    ("strategies: 3", "strategies must be a list of strings, got 3"),
    ("strategies: [1, 2]", "strategies must be a list of strings, got [1, 2]"),
    ("strategies:", "strategies must be a list of strings, got None"),
    ("strategies: []", "no strategy to run"),
    ("1: x", "unknown config field(s): 1"),
    ("cameras: 2\n1: x", "unknown config field(s): 1"),
    ("duration: .inf", "duration must be a positive number, got inf"),
    ("duration: .nan", "duration must be a number, got nan"),
    ("teacher: {classes: [day, 3]}", "teacher.classes must be a list of strings or null (unset), got ['day', 3]"),
    ("sources: [{path: a.mp4, fps: fast}]", "sources[0].fps must be a number or null (unset), got 'fast'"),
    ("world: 3", "config field 'world' must be a mapping"),
    ("- cameras", "a config must be a mapping of field names to values, got list"),
])
def test_config_values_of_the_wrong_type(tmp_path, capsys, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text + "\n")
    code, err = _main(["--config", str(path)], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err


def test_numbers_as_people_write_them(tmp_path):
    from driftlab.platform.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text("retrain_lr: 1e-4\nduration: 1e3\ncosts: {label_s_per_frame: 5E-3}\n")
    cfg = load_config(str(path))  # YAML 1.1 reads these as text
    assert (cfg.retrain_lr, cfg.duration, cfg.costs.label_s_per_frame) == (1e-4, 1000.0, 5e-3)


def test_paths_of_the_wrong_kind(tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "a-dir.yaml").mkdir()
    (tmp_path / "results").write_text("not a directory")
    (tmp_path / "frames").mkdir()
    for argv, message in [
        (["--config", str(tmp_path / "a-dir.yaml")], "a-dir.yaml is a directory"),
        (["--config", str(tmp_path / "binary.yaml")], "binary.yaml is not text"),
        (["--out", str(tmp_path / "results")], "--out " + str(tmp_path / "results") + " is a file"),
        (["--source", str(tmp_path / "frames"), "--inline"], "frames: directory has no images"),
    ]:
        code, err = _main(argv, capsys)
        assert code == 2 and message in err, (argv, err)


def test_gpus_asked_of_a_machine_without_them():
    out = run("--gpus-per-camera", "0.5", "--cameras", "2", "--no-progress")
    assert out.returncode == 2
    # The default comparison's five strategies at once, each its own fleet.
    assert "needs 5 GPUs but the Ray cluster has 0: 5 strategies at once" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_bad_seed_list():
    out = run("--seed", "0,x", "--no-progress")
    assert out.returncode == 2 and "--seed must be an integer or a comma-separated list" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_several_seeds_run_each_and_report_mean_and_std(tiny_cfg, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config_to_dict(tiny_cfg(duration=80.0))))
    out = run("--inline", "--config", str(cfg), "--seed", "4,5", "--strategies", "static,periodic",
              "--out", str(tmp_path / "runs"), "--no-progress")
    assert out.returncode == 0, out.stderr
    by_seed = pd.read_parquet(tmp_path / "runs" / "summary_by_seed.parquet")
    for seed in (4, 5):  # each seed is a whole run of its own
        alone = pd.read_parquet(tmp_path / "runs" / f"seed-{seed}" / "summary.parquet")
        pd.testing.assert_frame_equal(by_seed[by_seed.seed == seed].drop(columns="seed")
                                      .reset_index(drop=True), alone)
    assert by_seed[by_seed.strategy == "static"].accuracy.nunique() == 2  # the streams differ
    over = pd.read_parquet(tmp_path / "runs" / "summary_over_seeds.parquet").set_index("strategy")
    acc = by_seed.pivot(index="seed", columns="strategy", values="accuracy")
    assert over.loc["periodic", "accuracy"] == pytest.approx(acc.periodic.mean())
    assert over.loc["periodic", "margin"] == pytest.approx((acc.periodic - acc.static).mean())
    assert "mean ± std over seeds 4,5" in out.stdout and "vs best other" in out.stdout
    # The run says where it came from, and report.py makes its table from the Parquet.
    info = json.loads((tmp_path / "runs" / "run.json").read_text())
    assert info["command"].startswith("python experiments/drift_sim.py --inline") and info["model_cache"] and info["commit"]
    table = tmp_path / "table.md"
    rep = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(tmp_path / "runs"),
                          "--pairs", "periodic:static", "--metric", "accuracy,return_accuracy", "--out", str(table)],
                         capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    assert "\naccuracy %:" in table.read_text() and "\nreturn_accuracy %:" in table.read_text()
    diff = acc.periodic - acc.static
    row = f"| day_night | 2 | {100 * acc.static.mean():.1f} ± {100 * acc.static.std():.1f} |"
    assert row in table.read_text() and f"{100 * diff.mean():+.1f} ± {100 * diff.std():.1f} |" in table.read_text()
    assert info["command"] in table.read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no summary.parquet" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(tmp_path / "runs"),
                          "--metric", "acc"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no column acc" in bad.stderr and "Traceback" not in bad.stderr


def test_a_killed_multi_seed_run_resumes_to_the_uninterrupted_summary(tiny_cfg, tmp_path):
    import signal
    import time

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config_to_dict(tiny_cfg(duration=80.0))))
    argv = ["--inline", "--config", str(cfg), "--seed", "4,5", "--strategies", "static,periodic,edgesync",
            "--no-progress"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(*argv, "--out", str(whole)).returncode == 0

    def kill_when(path: pathlib.Path, *more: str):
        """Start the run, SIGKILL it as soon as ``path`` (a progress record) exists."""
        proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "drift_sim.py"), *argv,
                                 "--out", str(killed), *more], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.time() + 300
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()

    kill_when(killed / "seed-4" / "progress.json")   # seed 4: static done, periodic under way
    assert not (killed / "seed-4" / "summary.parquet").exists()
    kill_when(killed / "seed-5" / "progress.json", "--resume")   # seed 4 finished, seed 5 under way
    assert (killed / "seed-4" / "summary.parquet").exists() and not (killed / "seed-5" / "summary.parquet").exists()
    out = run(*argv, "--out", str(killed), "--resume")
    assert out.returncode == 0, out.stderr
    assert f"resuming {killed / 'seed-4'}: finished before" in out.stdout
    assert f"resuming {killed / 'seed-5'}: static finished before" in out.stdout
    for name in ("summary_by_seed.parquet", "summary_over_seeds.parquet", "seed-4/frames.parquet",
                 "seed-5/frames.parquet", "seed-5/jobs.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(whole / name), pd.read_parquet(killed / name))
    assert not list(killed.rglob("*.tmp"))
    other = run(*argv[:3], "--seed", "4,5", "--strategies", "static", "--no-progress", "--out", str(killed),
                "--resume")
    assert other.returncode == 2 and "cannot resume" in other.stderr and "differs in strategies" in other.stderr


def test_a_fresh_run_leaves_no_earlier_run_to_resume(tiny_cfg, tmp_path):
    """Without --resume, what an earlier run left in the directory (a progress
    record, a summary) is dropped before anything is written."""
    from driftlab.platform.runner import run_inline

    cfg = tiny_cfg(duration=40.0, strategies=["static"])
    (tmp_path / "progress.json").write_text(json.dumps({"done": {"static": {"frames_uploaded": 99,
                                                                            "label_gpu_s": 1.0}}}))
    pd.DataFrame({"strategy": ["periodic"]}).to_parquet(tmp_path / "summary.parquet")
    summary = run_inline(cfg, out_dir=str(tmp_path), progress=False, log=lambda *_: None)
    assert json.loads((tmp_path / "progress.json").read_text())["done"]["static"]["frames_uploaded"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "summary.parquet"), summary)
    (tmp_path / "progress.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot resume: .*progress.json is unreadable"):
        run_inline(cfg, out_dir=str(tmp_path), progress=False, log=lambda *_: None, resume=True)


def test_calibrate_writes_costs_drift_sim_reads(tmp_path):
    cfg_file = tmp_path / "mine.yaml"
    cfg_file.write_text("student: {arch: shufflenet_v2_x0_5}\nworld: {size: 32}\nduration: 60\n")
    out = tmp_path / "calibrated.yaml"
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "calibrate.py"), "--config", str(cfg_file),
                        "--out", str(out), "--frames", "4", "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    costs = yaml.safe_load(out.read_text())["costs"]
    assert costs["label_s_per_frame"] > 0 and costs["train_s_per_sample_epoch"] > 0
    assert "shufflenet_v2_x0_5 student" in r.stdout and "ms per frame" in r.stdout
    from driftlab.platform.config import load_config
    cfg = load_config(str(out))   # what drift_sim.py --config reads
    assert cfg.costs.label_s_per_frame == costs["label_s_per_frame"] and cfg.student.arch == "shufflenet_v2_x0_5"
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "calibrate.py"), "--config",
                          str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: config file not found")
