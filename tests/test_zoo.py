"""The model zoo (``+zoo``): hits, misses and its bound, on the server's own state."""
import numpy as np
import pytest
import torch
from torch import nn

from driftlab.platform.camera import Upload
from driftlab.platform.config import ConfigError, SimConfig, ZooParams
from driftlab.platform.models import build_student, clone, predict
from driftlab.platform.plugins import job_plugins
from driftlab.platform.scheduling import Job, Request
from driftlab.platform.server import Server, serve_jobs
from driftlab.platform.strategies import parse_strategy
from driftlab.platform.strategies.base import train_spec
from driftlab.platform.training import FitResult
from driftlab.platform.zoo import ModelZoo

from conftest import SMALL_WORLD

DAY, NIGHT = 200, 40   # grey levels of the two conditions


def frames(level: int, n: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + level)
    return rng.integers(level - 8, level + 8, (n, SMALL_WORLD.size, SMALL_WORLD.size, 3)).astype(np.uint8)


def zoo_server(**zoo) -> tuple[Server, ModelZoo, nn.Module, nn.Module]:
    """One camera, its initial ("day") student and a "night" one that labels
    every frame as the class the day one predicts least."""
    cfg = SimConfig(world=SMALL_WORLD, cameras=1, zoo=ZooParams(**zoo))
    torch.manual_seed(0)
    day = build_student(cfg.student, SMALL_WORLD.num_classes).eval()
    night = clone(day)
    least = np.bincount(predict(day, frames(DAY))[0], minlength=SMALL_WORLD.num_classes).argmin()
    [m for m in night.modules() if isinstance(m, nn.Linear)][-1].bias.data[least] += 100.0
    server = Server(cfg, [day], plugins=job_plugins(cfg, strategy=parse_strategy("periodic+zoo")))
    zoo = next(p for p in server.plugins if isinstance(p, ModelZoo))
    return server, zoo, day, night


def upload(server: Server, level: int, now: float, labeller: nn.Module, n: int = 8) -> Request:
    """Frames of one condition over the 10 s before ``now``, labelled by ``labeller``."""
    images = frames(level, n, seed=int(now))
    logits = np.eye(SMALL_WORLD.num_classes, dtype=np.float32)[predict(labeller, images)[0]] * 10
    times = np.linspace(now - 9.5, now - 0.5, n)
    return server.receive(Upload(0, images, times, {"logits": logits}, 0.5, 0.0, 0.0), now)


def finish(server: Server, request: Request, model: nn.Module, deployed: float) -> None:
    """A retraining job for ``request`` gave the camera ``model``."""
    job = Job(request, train_spec(server.cfg, epochs=1), since=0.0)
    server.finish(job, {k: v.clone() for k, v in model.state_dict().items()}, FitResult(1, 8), deployed)


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_zoo_hit_deploys_the_stored_model_when_its_condition_returns():
    server, zoo, day, night = zoo_server()
    manager = parse_strategy("periodic+zoo").training_manager(server.cfg)
    upload(server, DAY, 10.0, day)              # the initial model is stored under the first upload's condition
    assert len(zoo.entries[0]) == 1 and zoo.current[0] is zoo.entries[0][0]
    finish(server, upload(server, NIGHT, 20.0, night), night, deployed=25.0)   # adapted to the night
    assert len(zoo.entries[0]) == 2 and not server.swaps and zoo.checks == 0   # a new condition: no check
    manager.submit(upload(server, NIGHT, 30.0, night))    # still waiting when the day comes back

    free = server.teacher_free_at
    request = upload(server, DAY, 40.0, day)     # day again; the teacher agrees with the day model
    manager.submit(request)
    assert (zoo.checks, zoo.hits) == (1, 1) and request.est_accuracy == 1.0
    costs, n = server.cfg.costs, 8
    assert request.ready == pytest.approx(max(free, 40.0) + n * costs.label_s_per_frame)
    check_end = request.ready + 2 * n * costs.train_s_per_sample_epoch / 3   # two students' forward passes
    trained = []

    def execute(batch):   # the retraining runs no epoch: the zoo's part is what is tested
        trained.extend(batch)
        return [(inputs.state, FitResult(1, len(inputs.labels))) for inputs in batch]

    swap, job = serve_jobs(manager, server, until=100.0, execute=execute)
    assert swap.record.kind == "zoo" and swap.record.camera == 0 and swap.record.submitted == 40.0
    assert swap.record.finished == pytest.approx(check_end)
    assert swap.record.deployed == pytest.approx(check_end + server.downlink_s(0, 1.0))
    assert swap.version == 2 and same_weights(swap.state, day.state_dict()) and not server.swaps
    # The night request is withdrawn; the day one's job goes on from the zoo's model, on day frames only.
    [inputs] = trained
    assert job.record.kind == "retrain" and job.record.submitted == 40.0 and job.version == 3
    assert len(inputs.labels) == n and inputs.images.min() >= DAY - 8
    assert same_weights(inputs.state, day.state_dict())
    assert server.num_samples(0, 0.0, 40.0) == n          # so does Ekya's micro-profile
    # A job never lands before a model already on its way: the camera applies them in time order.
    server.deployed_at[0] = 500.0
    manager.submit(upload(server, DAY, 50.0, day))
    [late] = serve_jobs(manager, server, until=100.0, execute=execute)
    assert late.record.deployed == 500.0


def test_a_zoo_miss_leaves_the_camera_to_retraining():
    server, zoo, day, night = zoo_server()
    upload(server, DAY, 10.0, day)
    finish(server, upload(server, NIGHT, 20.0, night), night, deployed=25.0)
    # Day frames, but the teacher sides with the night model: checked, not deployed.
    request = upload(server, DAY, 40.0, night)
    assert (zoo.checks, zoo.hits) == (1, 0) and not server.swaps
    assert same_weights(server.models[0].state_dict(), night.state_dict())
    job = Job(request, train_spec(server.cfg, epochs=1), since=0.0)
    assert len(server.job_inputs(job, start=45.0).labels) == 24   # every upload still trains the job
    # A condition the zoo has never seen: not even checked.
    upload(server, 120, 60.0, day)
    assert (zoo.checks, zoo.hits) == (1, 0) and not server.swaps
    # A margin the day model cannot clear: a miss, even when it is right.
    server, zoo, day, night = zoo_server(margin=1.0)
    upload(server, DAY, 10.0, day)
    finish(server, upload(server, NIGHT, 20.0, night), night, deployed=25.0)
    upload(server, DAY, 40.0, day)
    assert (zoo.checks, zoo.hits) == (1, 0) and not server.swaps


def test_the_zoo_keeps_its_bound_and_the_conditions_the_camera_lived_in():
    server, zoo, day, night = zoo_server(size=2, match_distance=0.05)
    upload(server, DAY, 10.0, day)
    upload(server, DAY, 20.0, day)                      # the day matched twice
    finish(server, upload(server, NIGHT, 30.0, night), night, deployed=35.0)
    finish(server, upload(server, NIGHT + 20, 40.0, night), night, deployed=45.0)   # a third condition
    assert len(zoo.entries[0]) == 2
    # Of the two closest (the nights), each matched once: the one used longer ago leaves.
    levels = sorted(float(e.condition[:3].mean() * 255) for e in zoo.entries[0])
    np.testing.assert_allclose(levels, [NIGHT + 20, DAY], atol=1.5)
    assert sorted(e.support for e in zoo.entries[0]) == [1, 2]
    # A passing condition next to the day, which the camera lived in longer: the new model leaves.
    finish(server, upload(server, DAY - 40, 45.0, night), night, deployed=47.0)
    levels = sorted(float(e.condition[:3].mean() * 255) for e in zoo.entries[0])
    np.testing.assert_allclose(levels, [NIGHT + 20, DAY], atol=1.5)
    assert zoo.current[0] is None
    # A model within match_distance of a stored one replaces its weights; its key stays.
    key = next(e for e in zoo.entries[0] if e.condition[:3].mean() > 0.5).condition.copy()
    finish(server, upload(server, DAY + 2, 50.0, day), night, deployed=55.0)   # (a zoo hit on the way)
    assert zoo.hits == 1
    entry = next(e for e in zoo.entries[0] if e.condition[:3].mean() > 0.5)
    assert len(zoo.entries[0]) == 2 and np.array_equal(entry.condition, key)
    assert same_weights(entry.state, night.state_dict()) and zoo.memory_bytes() == 2 * entry.nbytes


def test_zoo_settings_and_names_are_checked():
    with pytest.raises(ConfigError, match="size must be a whole number >= 1, got 0"):
        ZooParams(size=0)
    with pytest.raises(ConfigError, match=r"margin must be in \[0, 1\], got 2"):
        ZooParams(margin=2)
    with pytest.raises(ValueError, match="static never uploads"):
        parse_strategy("static+zoo")
    assert job_plugins(SimConfig(), strategy=parse_strategy("ams")) == []
