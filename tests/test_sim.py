"""End-to-end runs of the loop (inline runner) on a tiny world."""
import numpy as np
import pandas as pd
import pytest
import torch

from driftlab.platform.adapters import BatchNormRefit, camera_components
from driftlab.platform.camera import Camera, Upload, build_camera
from driftlab.platform.config import DISTILL_WEIGHTS, ConfigError, RefitParams, SimConfig
from driftlab.platform.metrics import JOB_COLUMNS, format_seed_table, over_seeds, returned, summarize
from driftlab.platform.models import build_student, clone, predict, recalibrate_bn, to_tensor
from driftlab.platform.plugins import job_plugins
from driftlab.platform.runner import run_inline
from driftlab.platform.scheduling import Job, Request, condition_stats
from driftlab.platform.server import Server
from driftlab.platform.strategies import STRATEGIES, CameraPolicy, parse_strategy
from driftlab.platform.strategies.base import train_spec
from driftlab.platform.training import TrainSpec, fit, top_gradient_mask
from driftlab.platform.world import CameraStream, get_scenario, render_condition_set

from conftest import SMALL_WORLD


def test_every_strategy_runs_and_writes_results(tiny_cfg, tmp_path):
    cfg = tiny_cfg(strategies=list(STRATEGIES))
    out = tmp_path / "run"
    summary = run_inline(cfg, out_dir=str(out), progress=False, log=lambda *_: None)
    assert list(summary.strategy) == list(STRATEGIES)
    for name in ("frames.parquet", "jobs.parquet", "summary.parquet", "accuracy.png", "config.yaml"):
        assert (out / name).stat().st_size > 0
    frames = pd.read_parquet(out / "frames.parquet")
    n_frames = int(cfg.duration * cfg.world.fps) * cfg.cameras
    assert frames.groupby("strategy").size().tolist() == [n_frames] * len(STRATEGIES)
    assert {"strategy", "camera", "t", "label", "pred", "correct", "model_version"} <= set(frames.columns)
    jobs = pd.read_parquet(out / "jobs.parquet")
    s = summary.set_index("strategy")
    assert s.loc["static", "jobs"] == 0 and s.loc["static", "frames_uploaded"] == 0
    budget = int(cfg.upload_fraction * cfg.duration * cfg.world.fps) * cfg.cameras
    for name in ("periodic", "ekya", "ams", "edgesync"):
        assert 0 < s.loc[name, "frames_uploaded"] <= budget + cfg.cameras
        assert s.loc[name, "jobs"] > 0 and s.loc[name, "train_gpu_s"] > 0
    # Jobs are causal on the virtual clock, and deployed models are used after.
    assert (jobs.started >= jobs.submitted).all() and (jobs.finished > jobs.started).all()
    assert (jobs.deployed >= jobs.finished).all()
    adapted = frames[(frames.strategy == "periodic") & (frames.model_version > 0)]
    first = jobs[jobs.strategy == "periodic"].groupby("camera").deployed.min()
    for cam, t in first.items():
        assert adapted[adapted.camera == cam].t.min() >= t


def test_distillation_learns_the_teachers_logits_and_is_off_at_weight_zero():
    data = render_condition_set(SMALL_WORLD, ["day"], 96, seed=2)
    k = SMALL_WORLD.num_classes
    # A teacher whose logits point one class past every label.
    shifted = np.eye(k, dtype=np.float32)[(data.labels + 1) % k] * 8.0
    base = build_student("mobilenet_v3_small", k)
    plain, off, on = clone(base), clone(base), clone(base)
    fit(plain, data.images, data.labels, TrainSpec(epochs=2, seed=1))
    fit(off, data.images, data.labels, TrainSpec(epochs=2, seed=1, kd_weight=0.0), teacher_logits=shifted)
    for a, b in zip(plain.parameters(), off.parameters()):
        assert torch.equal(a, b)
    fit(on, data.images, data.labels, TrainSpec(epochs=20, seed=1, lr=2e-3, kd_weight=1.0),
        teacher_logits=shifted)
    preds = predict(on, data.images)[0]
    assert (preds == (data.labels + 1) % k).mean() > 0.8 > 0.2 > (preds == data.labels).mean()


def test_distill_and_learning_rate_settings_reach_every_job(tiny_cfg, tmp_path):
    runs, jobs = {}, {}
    for name, distill, lr in [("none", "none", 1e-3), ("hinton", "hinton", 1e-3), ("genkd", "genkd", 1e-3),
                              ("fast", "hinton", 1e-2)]:
        cfg = tiny_cfg(strategies=["periodic"], distill=distill, retrain_lr=lr)
        spec = train_spec(cfg, epochs=1)
        assert (spec.kd_weight, spec.lr) == (DISTILL_WEIGHTS[distill], lr)
        run_inline(cfg, out_dir=str(tmp_path / name), progress=False, log=lambda *_: None)
        runs[name] = pd.read_parquet(tmp_path / name / "frames.parquet")
        jobs[name] = pd.read_parquet(tmp_path / name / "jobs.parquet")
    # Same streams and uploads, different learning: the deployed models differ.
    assert runs["none"].label.equals(runs["hinton"].label) and runs["none"].label.equals(runs["genkd"].label)
    assert not runs["none"].pred.equals(runs["hinton"].pred)
    assert not runs["none"].pred.equals(runs["genkd"].pred)
    assert runs["hinton"].label.equals(runs["fast"].label) and not runs["hinton"].pred.equals(runs["fast"].pred)
    # The same jobs, each genkd one charged its extra CVAE phase.
    assert len(jobs["genkd"]) == len(jobs["none"]) > 0
    np.testing.assert_allclose(jobs["genkd"].gpu_s, jobs["none"].gpu_s * tiny_cfg().costs.genkd_factor)
    with pytest.raises(ConfigError, match="unknown distill 'bogus'"):
        tiny_cfg(distill="bogus")
    with pytest.raises(ConfigError, match="retrain_lr must be a positive number, got 0"):
        tiny_cfg(retrain_lr=0)


def test_a_job_borrows_labelled_samples_of_the_same_condition_from_other_cameras():
    def fleet_server(**cfg) -> Server:
        cfg = SimConfig(world=SMALL_WORLD, cameras=3, **cfg)
        server = Server(cfg, [build_student(cfg.student, SMALL_WORLD.num_classes)] * 3, plugins=job_plugins(cfg))
        for camera, level, times in [(2, 40, [-50.0]),              # dark, but older than the window
                                     (0, 45, [14.0, 20.0]),         # camera 0 at night
                                     (1, 50, [12.0, 16.0, 18.0]),   # camera 1 at night too, labelled next
                                     (2, 210, [15.0, 19.0])]:       # camera 2 by day
            images = np.full((len(times), 8, 8, 3), level, np.uint8)
            logits = np.eye(SMALL_WORLD.num_classes, dtype=np.float32)[[camera] * len(times)]
            server.receive(Upload(camera, images, np.array(times), {"logits": logits}, 0.5, 0.0, 0.0), now=20.0)
        return server

    server = fleet_server(borrow=2, borrow_window=60.0)
    own = Request(camera=0, cutoff=20.0, ready=server.stores[0].ready[0], est_accuracy=0.5,
                  mix_shift=0.0, last_update=0.0)
    job = Job(own, train_spec(server.cfg, epochs=1), since=-100.0, tau=100.0)
    # While only camera 0's labels are back, there is nothing to borrow.
    assert len(server.job_inputs(job, start=own.ready).labels) == 2
    inputs = server.job_inputs(job, start=30.0)
    assert inputs.labels.tolist() == [0, 0, 1, 1]          # its own samples, then camera 1's
    assert inputs.images[2:].max() == 50                    # two night frames, not the day ones
    np.testing.assert_allclose(inputs.weights, np.exp(-(20.0 - np.array([14.0, 20.0, 12.0, 16.0])) / 100.0))
    assert fleet_server().job_inputs(job, start=30.0).labels.tolist() == [0, 0]   # off by default
    with pytest.raises(ConfigError, match="borrow must be a whole number >= 0, got -1"):
        SimConfig(borrow=-1)


def test_a_camera_reports_the_condition_of_every_frame_since_its_last_upload():
    cfg = SimConfig(world=SMALL_WORLD, cameras=1, duration=60.0)
    source = CameraStream(cfg.world, get_scenario(cfg.scenario), 0, 1, cfg.seed, cfg.duration)
    student = build_student(cfg.student, SMALL_WORLD.num_classes)
    def teach(x):
        return {"logits": np.eye(SMALL_WORLD.num_classes, dtype=np.float32)[np.zeros(len(x), int)]}

    camera = build_camera(parse_strategy("edgesync"), cfg, 0, source, student, teach)
    camera.run(10.0)
    assert camera.upload(10.0, 0) is None                  # its period is 20 s: not yet
    camera.run(20.0)
    up = camera.upload(20.0, 1)
    seen = source.frames(0, int(round(20.0 * source.fps))).images
    assert 0 < len(up.images) < len(seen)                  # it uploads a few frames ...
    np.testing.assert_allclose(up.condition, condition_stats(seen).mean(axis=0), rtol=1e-5)  # ... of all it saw
    request = Server(cfg, [student]).receive(up, now=20.0)
    np.testing.assert_array_equal(request.condition, up.condition)
    ams = build_camera(parse_strategy("ams"), cfg, 0, source, student, teach)
    ams.run(20.0)      # a manager that does not read it gets none
    assert ams.upload(20.0, 1).condition is None


def refitting(cfg, source, student, params: RefitParams) -> Camera:
    """A camera holding only the BatchNorm refit."""
    return Camera(0, source, clone(student), SMALL_WORLD.num_classes, CameraPolicy(cfg, 0),
                  adapters=[BatchNormRefit(params)])


def _norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_recalibration_refits_only_the_shallow_batchnorm_statistics():
    model = build_student("mobilenet_v3_small", SMALL_WORLD.num_classes)
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in _norms(model)]
    dark = np.random.default_rng(0).integers(0, 40, size=(16, 32, 32, 3), dtype=np.uint8)
    recalibrate_bn(model, dark, 3)
    stem = model.features[0]   # conv, BatchNorm, activation
    with torch.no_grad():
        z = stem[0](to_tensor(dark))
    torch.testing.assert_close(stem[1].running_mean, z.mean(dim=(0, 2, 3)))   # the frames' statistics
    torch.testing.assert_close(stem[1].running_var, z.var(dim=(0, 2, 3)))
    norms = _norms(model)
    assert all(not torch.equal(m.running_mean, b[0]) for m, b in zip(norms[:3], before))
    assert all(torch.equal(m.running_mean, b[0]) and torch.equal(m.running_var, b[1])
               for m, b in zip(norms[3:], before[3:]))                    # deeper layers untouched
    assert not model.training and all(m.momentum == 0.1 for m in norms)


def test_a_camera_refits_its_shallow_statistics_once_it_leaves_home():
    cfg = SimConfig(world=SMALL_WORLD, cameras=1, duration=200.0)   # dusk from 44 s
    source = CameraStream(cfg.world, get_scenario("day_night"), 0, 1, cfg.seed, cfg.duration)
    student = build_student(cfg.student, SMALL_WORLD.num_classes)
    initial = [m.running_mean.clone() for m in _norms(student)]
    camera = refitting(cfg, source, student, RefitParams(layers=3, window=20.0, max_window=0.0, home_distance=0.06))
    for t in (10.0, 20.0, 30.0, 40.0):   # in the day its initial model was fit to: untouched
        camera.run(t)
        assert all(torch.equal(m.running_mean, b) for m, b in zip(_norms(camera.model), initial))
    for t in (50.0, 60.0, 70.0, 80.0):
        camera.run(t)
    expected = clone(student)                                     # in the dusk: the last 20 s
    recalibrate_bn(expected, source.frames(120, 160).images, 3)
    for m, e in zip(_norms(camera.model), _norms(expected)):
        torch.testing.assert_close(m.running_mean, e.running_mean)
    assert not torch.equal(_norms(camera.model)[0].running_mean, initial[0])
    camera.deploy_at(85.0, 1, student.state_dict())               # a new model is refitted too
    camera.run(90.0)
    expected = clone(student)
    recalibrate_bn(expected, source.frames(140, 180).images, 3)
    assert camera.version == 1
    torch.testing.assert_close(_norms(camera.model)[0].running_mean, _norms(expected)[0].running_mean)
    always = refitting(cfg, source, student, RefitParams(layers=3, window=20.0, max_window=0.0,
                                                         home_distance=0.0))   # no home: from the first tick
    always.run(10.0)
    assert not torch.equal(_norms(always.model)[0].running_mean, initial[0])
    assert camera_components(parse_strategy("ams"), cfg, 20.0)[1] == []          # baselines never refit ...
    refit, = camera_components(parse_strategy("ams+refit"), cfg, 20.0)[1]        # ... unless asked to
    assert refit.p == cfg.refit
    refit, = camera_components(parse_strategy("edgesync+cp"), cfg, 20.0)[1]
    assert refit.p.home_distance == 0 and refit.p.layers == cfg.refit.layers


def test_the_refit_window_reaches_back_while_the_condition_holds():
    cfg = SimConfig(world=SMALL_WORLD, cameras=1, duration=200.0)   # night from 62 s, after dusk
    source = CameraStream(cfg.world, get_scenario("day_night"), 0, 1, cfg.seed, cfg.duration)
    student = build_student(cfg.student, SMALL_WORLD.num_classes)

    def refitted(same_distance: float) -> torch.Tensor:   # at 100 s, 20-s blocks up to 80 s
        camera = refitting(cfg, source, student, RefitParams(layers=3, window=20.0, max_window=80.0,
                                                             same_distance=same_distance, home_distance=0.0))
        for t in range(10, 101, 10):
            camera.run(float(t))
        return _norms(camera.model)[0].running_mean

    def fitted(start: float) -> torch.Tensor:              # to the frames from ``start`` to 100 s
        expected = clone(student)
        recalibrate_bn(expected, source.frames(int(start * source.fps), int(100 * source.fps)).images, 3)
        return _norms(expected)[0].running_mean

    torch.testing.assert_close(refitted(10.0), fitted(20.0))   # every block counts as the same: 80 s
    torch.testing.assert_close(refitted(0.0), fitted(80.0))    # none does: the last 20 s
    settled = refitted(0.06)                                   # the night and its blend, not the dusk
    assert not torch.allclose(settled, fitted(20.0)) and not torch.allclose(settled, fitted(80.0))
    torch.testing.assert_close(settled, fitted(60.0))


def test_same_seed_same_summary(tiny_cfg, tmp_path):
    cfg = tiny_cfg(strategies=["periodic", "edgesync"], seed=3, borrow=8)
    a = run_inline(cfg, out_dir=str(tmp_path / "a"), progress=False, log=lambda *_: None)
    b = run_inline(cfg, out_dir=str(tmp_path / "b"), progress=False, log=lambda *_: None)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "summary.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "summary.parquet"))
    pd.testing.assert_frame_equal(a, b)


def test_early_stopping_and_gradient_mask():
    data = render_condition_set(SMALL_WORLD, ["day"], 40, seed=1)
    model = build_student("mobilenet_v3_small", SMALL_WORLD.num_classes)
    res = fit(model, data.images, data.labels, TrainSpec(epochs=30, patience=1, lr=1e-2))
    assert 1 <= res.epochs_run < 30 and len(res.val_accuracy) == res.epochs_run
    before = {k: v.clone() for k, v in model.named_parameters()}
    mask = top_gradient_mask(model, data.images, data.labels, 0.05)
    fit(model, data.images, data.labels, TrainSpec(epochs=1), grad_mask=mask)
    changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0 < changed <= 0.05 * total + 1


def test_over_seeds_gives_mean_std_and_the_paired_margin():
    by_seed = pd.DataFrame({
        "strategy": ["a", "b", "c"] * 2, "seed": [0, 0, 0, 1, 1, 1],
        "accuracy": [0.70, 0.60, 0.65, 0.50, 0.58, 0.40],
        "drift_accuracy": [0.6, 0.5, 0.5, 0.4, 0.5, 0.3],
        "return_accuracy": [0.9, np.nan, 0.8, 0.7, np.nan, 0.6],
        "update_delay_s": [10.0, 20.0, np.nan, 12.0, 22.0, np.nan],
        "frames_uploaded": [100, 50, 0, 120, 50, 0], "train_gpu_s": [5.0, 6.0, 0.0, 7.0, 6.0, 0.0],
        "zoo_hits": [3, 0, 0, 5, 0, 0]})
    t = over_seeds(by_seed).set_index("strategy")
    assert list(t.index) == ["a", "b", "c"] and (t.seeds == 2).all()
    assert t.loc["a", "accuracy"] == pytest.approx(0.60)
    assert t.loc["a", "accuracy_std"] == pytest.approx(np.std([0.70, 0.50], ddof=1))
    # Paired against the best other strategy of the same seed: a leads by 0.05
    # on seed 0 and trails b by 0.08 on seed 1.
    assert t.loc["a", "margin"] == pytest.approx((0.05 - 0.08) / 2)
    assert t.loc["b", "margin"] == pytest.approx((-0.10 + 0.08) / 2)
    assert t.loc["a", "margin_std"] == pytest.approx(np.std([0.05, -0.08], ddof=1))
    assert t.loc["a", "frames_uploaded"] == 110 and np.isnan(t.loc["c", "update_delay_s"])
    assert t.loc["a", "return_accuracy"] == pytest.approx(0.8) and np.isnan(t.loc["b", "return_accuracy"])
    assert t.loc["a", "zoo_hits"] == 4
    text = format_seed_table(t.reset_index())
    assert "60.0 ± 14.1" in text and "-1.5 ± 9.2" in text and "80.0 ± 14.1" in text


def test_return_accuracy_counts_the_frames_back_home_after_a_drift():
    frames = pd.DataFrame({   # camera 1's rows out of time order, as a flush may leave them
        "strategy": "a", "camera": [0, 0, 0, 0, 0, 1, 1, 1], "t": [0, 1, 2, 3, 4, 2, 0, 1],
        "label": 0, "pred": [0, 0, 1, 1, 0, 0, 1, 1], "drifted": [False, True, True, False, False, False, True, False]})
    frames["correct"] = frames.pred == frames.label
    assert returned(frames).tolist() == [False, False, False, True, True, True, False, True]
    jobs = pd.DataFrame(columns=JOB_COLUMNS)
    s = summarize(frames, jobs, ["a"], {}, {}).iloc[0]
    assert s.return_accuracy == pytest.approx(2 / 4) and s.drift_accuracy == pytest.approx(1 / 3)
    assert s.jobs == 0 and s.zoo_hits == 0 and np.isnan(s.reaction_s)
