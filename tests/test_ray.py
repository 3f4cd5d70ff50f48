"""The loop on a real local Ray: camera-group actors, the Serve teacher, Ray Train.

One Ray instance for the module; the Serve HTTP proxy on a free port.
"""
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
import socket
import sys
import urllib.error
import urllib.request

import cv2
import numpy as np
import pandas as pd
import pytest
import ray
import torch
from ray import serve

from driftlab.actors.runner import NAMESPACE, WORKER_ENV, RayOptions, ResourceError, plan_resources, run_on_ray
from driftlab.actors.trainer import TrainPool
from driftlab.platform.distill import (ClipConfig, DistillConfig, DistillJob, make_clips,
                                       teacher_targets, train_teacher)
from driftlab.deployments.teacher import ROUTE, TeacherOptions, deploy_teacher, teacher_app
from driftlab.platform.config import TeacherSpec
from driftlab.platform.models import build_student, build_teacher, predict
from driftlab.platform.runner import run_inline
from driftlab.platform.server import JobInputs
from driftlab.platform.strategies import STRATEGIES
from driftlab.platform.world import open_recording
from driftlab.platform.training import TrainSpec
from driftlab.platform.world import render_condition_set

from test_video import fleet_cfg, needs_clips, own_models  # noqa: F401 (a fixture)
from conftest import SMALL_WORLD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, namespace=NAMESPACE, include_dashboard=True, runtime_env={"env_vars": WORKER_ENV},
             logging_level="warning", configure_logging=True)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


USER_STRATEGY = """
from driftlab.platform.scheduling import Job
from driftlab.platform.strategies import CameraPolicy, TrainingManager, register_strategy


class TenthPolicy(CameraPolicy):
    def budget(self, num_frames):
        return num_frames // 10


class NewestFirst(TrainingManager):
    def next_batch(self, now, server):
        ready = self._ready(now)
        if not ready:
            return []
        r = max(ready, key=lambda r: (r.cutoff, -r.camera))
        self._take([r])
        return [Job(r, self.spec(epochs=1, seed=r.camera), since=r.cutoff - self.cfg.window)]


register_strategy("newest_first", TenthPolicy, NewestFirst)
"""


def _import_user_strategy(folder):
    """A strategy in a module of the user's own, which Ray's workers cannot import."""
    import importlib.util

    path = folder / "my_strategies.py"
    path.write_text(USER_STRATEGY)
    spec = importlib.util.spec_from_file_location("my_strategies", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_strategies"] = module
    spec.loader.exec_module(module)


@pytest.mark.slow
def test_ray_run_equals_inline_and_survives_crashes(local_ray, tiny_cfg, tmp_path):
    # edgesync with the change-point trigger: the detector's state must survive the crash too;
    # genkd: the teacher's attention over Serve, each camera's seed 2 parts through Ray Train;
    # borrow: jobs take other cameras' samples from the manager's store;
    # edgesync+zoo: the zoo's checks in the manager actor, its models to the camera groups;
    # newest_first+refit: a strategy from the user's own module, with a camera component.
    _import_user_strategy(tmp_path)
    try:
        _run_equals_inline(tiny_cfg, tmp_path, local_ray)
    finally:
        STRATEGIES.pop("newest_first", None)
        sys.modules.pop("my_strategies", None)


def _run_equals_inline(tiny_cfg, tmp_path, http_port: int):
    from ray.util.state import list_actors

    cfg = tiny_cfg(strategies=["ams", "edgesync+cp", "newest_first+refit", "edgesync+zoo"],
                   changepoint={"min_snippets": 10, "hold": 40.0}, distill="genkd", borrow=4)
    inline = run_inline(cfg, progress=False, log=lambda *_: None)
    assert inline.set_index("strategy").loc["edgesync+cp", "jobs"] > 0  # the trigger fired
    mine = inline.set_index("strategy").loc["newest_first+refit"]
    assert mine.jobs > 0 and mine.frames_uploaded <= cfg.duration * cfg.world.fps * cfg.cameras / 10
    assert inline.set_index("strategy").loc["edgesync+zoo", "zoo_hits"] > 0
    seen: dict[str, set] = {}

    def after_tick(strategy, k):  # the strategies run at once, each in its own driver thread
        if strategy == "ams" and k == 2:  # the teacher's replica dies; Serve replaces it
            replica = next(a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                           if a.class_name.startswith("ServeReplica:teacher:Teacher"))
            ray.kill(ray.get_actor(replica.name, namespace="serve"), no_restart=True)
            seen["killed_replica"] = replica.actor_id
        if strategy == "ams" and k == 8:
            seen["ids"] = {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)}
        if strategy == "edgesync+cp" and k == 3:
            alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            seen["names"] = {a.name for a in alive}
            seen["classes"] = {a.class_name for a in alive}
            ray.kill(ray.get_actor("edgesync+cp/cameras-1"), no_restart=False)  # a crash mid-run

    out = tmp_path / "ray"
    # One camera per group actor: two groups per strategy, all four strategies at once.
    summary = run_on_ray(cfg, RayOptions(http_port=http_port, cameras_per_actor=1, strategies_at_once=4),
                         out_dir=str(out),
                         progress=False, log=lambda *_: None, after_tick=after_tick)
    # The dashboard's state API saw the named parts while the run was going.
    assert {f"{s}/{part}" for s in ("ams", "edgesync+cp", "newest_first+refit", "edgesync+zoo")
            for part in ("cameras-0", "cameras-1", "manager")} <= seen["names"]
    assert any(c.startswith("ServeReplica:teacher:Teacher") for c in seen["classes"])
    assert seen["killed_replica"] not in seen["ids"]  # a new replica served the rest
    assert "RayTrainWorker" in seen["classes"]
    # The crashed camera was restarted and resumed exactly where it was.
    restarted = list_actors(filters=[("name", "=", "edgesync+cp/cameras-1")], detail=True, limit=10)
    assert max(a.num_restarts for a in restarted) >= 1
    pd.testing.assert_frame_equal(inline, summary)
    frames = pd.read_parquet(out / "frames.parquet")
    assert len(frames) == 4 * cfg.cameras * int(cfg.duration * cfg.world.fps)
    assert (out / "summary.parquet").exists() and (out / "accuracy.png").exists()


@pytest.mark.slow
@needs_clips
def test_real_clips_with_own_models_on_ray_equal_inline(local_ray, own_models, tmp_path):
    """Three cameras, each its own real clip, a teacher and a student from weight files."""
    cfg = fleet_cfg(own_models)
    inline = run_inline(cfg, progress=False, log=lambda *_: None)
    summary = run_on_ray(cfg, RayOptions(http_port=local_ray, cpus_per_camera=0.1), out_dir=str(tmp_path),
                         progress=False, log=lambda *_: None)
    pd.testing.assert_frame_equal(inline, summary)
    frames = pd.read_parquet(tmp_path / "frames.parquet")
    counts = frames[frames.strategy == "static"].groupby("camera").size()
    fleet_sources = [open_recording(s, i, cfg.world.fps, cfg.frame_size, cfg.duration, cfg.classes)
                     for i, s in enumerate(cfg.sources)]
    assert counts.tolist() == [s.num_frames for s in fleet_sources]


def test_teacher_over_handle_and_http(local_ray, teacher_ckpt):
    opts = TeacherOptions(TeacherSpec(weights=teacher_ckpt), num_classes=SMALL_WORLD.num_classes,
                          image_size=SMALL_WORLD.size, max_side=256, max_body_bytes=200_000)
    handle = deploy_teacher(opts)
    frames = render_condition_set(SMALL_WORLD, ["day", "night"], 6, seed=4)
    model = build_teacher("resnet18", SMALL_WORLD.num_classes)
    model.load_state_dict(torch.load(teacher_ckpt, weights_only=True))
    direct, _ = predict(model.eval(), frames.images)
    # Concurrent handle calls are batched and each gets its own frames' labels.
    responses = [handle.label.remote(frames.images[i:i + 3]) for i in range(0, len(frames), 3)]
    served = np.concatenate([r.result()["labels"] for r in responses])
    np.testing.assert_array_equal(served, direct)

    url = f"http://127.0.0.1:{local_ray}{ROUTE}"
    png = _encode(frames.images[0], "PNG")
    status, body = _post(url, png)
    assert status == 200 and body["label"] == int(direct[0]) and 0 < body["confidence"] <= 1
    status, body = _post(url, b"not an image at all")
    assert status == 400 and "not an image" in body["error"]
    status, body = _post(url, _encode(np.zeros((300, 300, 3), np.uint8), "PNG"))
    assert status == 413 and "300x300" in body["error"]
    status, body = _post(url, b"\0" * 300_000)
    assert status == 413 and "exceeds" in body["error"]
    status, body = _post(url, _png_declaring(20000, 20000))   # a few hundred bytes, 400 MP declared
    assert status == 413 and "400000000 pixels" in body["error"]
    status, body = _post(url, png)  # the replica kept serving
    assert status == 200 and body["label"] == int(direct[0])


def _post(url: str, body: bytes | None, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _encode(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` grey pixels, with
    ten rows of data: what a decompression bomb's first bytes look like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 10)) + chunk(b"IEND", b""))


def test_teacher_http_route_under_bad_bodies(local_ray, teacher_ckpt):
    """A bounded fuzz on loopback: every bad body a 4xx with a JSON error, the
    replica alive throughout, good requests answered while bad ones arrive."""
    from PIL import Image
    from ray.util.state import list_actors

    deploy_teacher(TeacherOptions(TeacherSpec(weights=teacher_ckpt), num_classes=SMALL_WORLD.num_classes,
                                  image_size=SMALL_WORLD.size, max_side=256, max_pixels=200 * 200,
                                  max_body_bytes=200_000))
    url = f"http://127.0.0.1:{local_ray}{ROUTE}"
    rng = np.random.default_rng(0)
    rgb = render_condition_set(SMALL_WORLD, ["day"], 1, seed=1).images[0]
    exif = Image.Exif()
    exif[0x0112] = 6   # orientation: rotated 90 degrees
    good = [_encode(rgb, "PNG"), _encode(rgb, "JPEG", quality=90), _encode(rgb, "WEBP"),
            _encode(rgb[..., 0], "PNG"), _encode(np.dstack([rgb, rgb[..., :1]]), "PNG"),
            _encode(rgb[:20], "JPEG", exif=exif)]
    bad = [b"", b"GIF89a", b"%PDF-1.4 not an image", b'{"frames": [1, 2, 3]}', bytes(rng.integers(0, 256, 5000)),
           _png_declaring(20000, 20000), _png_declaring(100_000, 100_000), _png_declaring(250, 250),
           _encode(np.zeros((10, 300, 3), np.uint8), "PNG")]
    bad += [g[:int(n)] for g in good[:3] for n in rng.integers(8, len(g) // 2, 20)]   # truncated
    flipped = []   # random bytes changed: may still decode, or not; never a 5xx
    for g in good:
        for _ in range(25):
            b = bytearray(g)
            for i in rng.integers(0, len(b), 4):
                b[i] = rng.integers(0, 256)
            flipped.append(bytes(b))
    before = {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
              if a.class_name.startswith("ServeReplica:teacher")}
    bodies = [("good", g) for g in good * 5] + [("bad", b) for b in bad] + [("flipped", f) for f in flipped]
    order = rng.permutation(len(bodies))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: (bodies[i][0], *_post(url, bodies[i][1])), order))
    assert len(answers) >= 240
    for kind, status, body in answers:
        if kind == "good":
            assert status == 200 and 0 <= body["label"] < SMALL_WORLD.num_classes, body
        elif kind == "bad":
            assert 400 <= status < 500 and body["error"], (status, body)
        else:
            assert status == 200 or (400 <= status < 500 and body["error"]), (status, body)
    assert _post(url, None)[0] == 405
    after = {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
             if a.class_name.startswith("ServeReplica:teacher")}
    assert before == after   # the same replica served all of it
    # A bomb's 413 comes from its header: a good request sent with it is not held up.
    import time
    with ThreadPoolExecutor(2) as pool:
        t0 = time.time()
        bomb = pool.submit(_post, url, _png_declaring(20000, 20000))
        status, body = pool.submit(_post, url, good[0]).result()
        assert status == 200 and bomb.result()[0] == 413
        assert time.time() - t0 < 10   # decoding the bomb alone took 25 s


def test_bad_teacher_checkpoint_fails_at_deploy(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher weights not found"):
        teacher_app(TeacherOptions(TeacherSpec(weights=str(tmp_path / "missing.pt"))))
    wrong = tmp_path / "student.pt"
    torch.save(build_student("mobilenet_v3_small", 6).state_dict(), wrong)
    with pytest.raises(ValueError, match="do not fit ResNet: key 'conv1.weight'"):
        teacher_app(TeacherOptions(TeacherSpec(weights=str(wrong))))


def test_train_pool_runs_retraining_and_distillation_and_reports_a_failing_job(local_ray):
    data = render_condition_set(SMALL_WORLD, ["day"], 8, seed=2)
    student = build_student("mobilenet_v3_small", SMALL_WORLD.num_classes)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    good = JobInputs("mobilenet_v3_small", SMALL_WORLD.num_classes, state, data.images,
                     data.labels, None, TrainSpec(epochs=1))
    bad = JobInputs("mobilenet_v3_small", SMALL_WORLD.num_classes, {"nonsense": torch.zeros(1)},
                    data.images, data.labels, None, TrainSpec(epochs=1))
    # A generative distillation of an action student, as the priority manager would send it.
    clips = make_clips(ClipConfig(num_classes=7), 14, seed=4)
    teacher, teacher_cvae = train_teacher(clips, 7, DistillConfig(epochs=1, batch_size=7),
                                          log=lambda *_: None)
    distill = DistillJob("genkd", clips, 7, DistillConfig(epochs=2, batch_size=7),
                         teacher_targets(teacher, clips.videos), teacher_cvae.state_dict())
    pool = TrainPool(num_workers=1, cpus_per_worker=0.5)
    try:
        client = pool.client()
        messages = []
        out = client.run([good, bad, good, distill], log=messages.append)
        # Two managers (strategies running at once) share the pool; each gets its own answers.
        others = [pool.client(), pool.client()]
        with ThreadPoolExecutor(2) as threads:
            shared = list(threads.map(lambda c: c.run([good]), others))
    finally:
        pool.close()
    assert all(torch.equal(s[0][0][k], out[0][0][k]) for s in shared for k in state)
    assert out[1] is None and len(client.failures) == 1
    assert "failed 2 times" in client.failures[0] and any("retrying" in m for m in messages)
    new_state, fit_result = out[0]
    assert fit_result.epochs_run == 1 and fit_result.samples == len(data.labels)
    assert any(not torch.equal(new_state[k], state[k]) for k in state)
    # Same inputs, same weights, whichever process ran them.
    assert all(torch.equal(out[0][0][k], out[2][0][k]) for k in state)
    distilled, result = out[3]
    inline, _ = distill.run()
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    assert distilled.keys() == inline.keys()
    assert all(torch.equal(distilled[k], inline[k]) for k in inline)


def test_impossible_resource_requests_are_one_clear_error(tiny_cfg):
    cfg = tiny_cfg(cameras=40)
    with pytest.raises(ResourceError, match=r"needs 11\.5 CPUs but the Ray cluster has 4"):
        plan_resources(cfg, RayOptions(), {"CPU": 4.0})
    with pytest.raises(ResourceError, match=r"needs 20 GPUs but the Ray cluster has 0"):
        plan_resources(cfg, RayOptions(gpus_per_camera=0.5), {"CPU": 64.0})
    plan = plan_resources(tiny_cfg(), RayOptions(), {"CPU": 4.0, "GPU": 1.0})
    assert plan["teacher_gpus"] == 0.25 and plan["train_gpus"] == 0.5 and plan["GPU"] <= 1.0


@pytest.mark.slow
def test_train_pool_survives_a_dead_worker(local_ray):
    import os
    import signal
    import threading
    import time

    from ray.util.state import list_actors

    data = render_condition_set(SMALL_WORLD, ["day"], 32, seed=3)
    state = build_student("mobilenet_v3_small", SMALL_WORLD.num_classes).state_dict()

    def job(epochs):
        return JobInputs("mobilenet_v3_small", SMALL_WORLD.num_classes, state, data.images,
                         data.labels, None, TrainSpec(epochs=epochs))

    pool = TrainPool(num_workers=1, cpus_per_worker=0.5)
    killed = []

    def kill_worker():  # while the long job runs
        time.sleep(2)
        worker = next(a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                      if a.class_name == "RayTrainWorker")
        os.kill(worker.pid, signal.SIGKILL)
        killed.append(worker.pid)

    try:
        client = pool.client()
        client.run([job(1)])  # the worker is up and waiting
        messages = []
        killer = threading.Thread(target=kill_worker)
        killer.start()
        out = client.run([job(60)], log=messages.append)
        killer.join()
    finally:
        pool.close()
    assert killed and any("worker died" in m for m in messages), messages
    _, fit_result = out[0]  # the job ran again, whole, on the restarted worker
    assert fit_result.epochs_run == 60 and not client.failures
