"""Fleet scale: camera groups, bounded per-camera state, and a multi-node cluster."""
import numpy as np
import pandas as pd
import pytest
import ray

from driftlab.actors.runner import RayOptions, group_size, run_on_ray, start_local_cluster
from driftlab.platform.camera import CameraGroup, build_camera, shard
from driftlab.platform.models import build_student, clone
from driftlab.platform.runner import build_fleet, run_inline
from driftlab.platform.sim import inline_simulation
from driftlab.platform.strategies import parse_strategy
from driftlab.platform.world import CameraStream, get_scenario

from conftest import SMALL_WORLD


def _cameras(cfg, students, strategy="ams"):
    scenario = get_scenario("day_night")
    return [build_camera(parse_strategy(strategy), cfg, i,
                         CameraStream(SMALL_WORLD, scenario, i, len(students), 0, cfg.duration), clone(s),
                         teach=None) for i, s in enumerate(students)]


def test_a_camera_group_infers_as_its_cameras_do_one_by_one(tiny_cfg):
    cfg = tiny_cfg(cameras=3)
    students = [build_student(cfg.student, SMALL_WORLD.num_classes, seed=s).eval() for s in range(3)]
    alone, stacked = _cameras(cfg, students), CameraGroup(_cameras(cfg, students), vectorize=True)
    # Camera 2 gets new weights in the middle of the second tick: it infers alone there.
    new = build_student(cfg.student, SMALL_WORLD.num_classes, seed=9).state_dict()
    alone[2].deploy_at(14.0, 1, new)
    stacked.deploy_at(2, 14.0, 1, new)
    for until in (10.0, 20.0):
        logs = stacked.run(until)
        for cam, log in zip(alone, logs):
            ref = cam.run(until)
            np.testing.assert_array_equal(log.preds, ref.preds)
            np.testing.assert_allclose(log.confs, ref.confs, atol=1e-5)
            np.testing.assert_array_equal(log.versions, ref.versions)
    assert list(logs[2].versions) == [0] * 8 + [1] * 12  # 2 fps: frames from 14 s on use version 1
    assert shard(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert group_size(64) == 32 and group_size(4) == 4 and group_size(256, nodes=4) == 32
    assert group_size(8, nodes=4) == 2 and group_size(2, nodes=4) == 1


def test_per_camera_state_stays_bounded(tiny_cfg):
    cfg = tiny_cfg(cameras=2, duration=400.0, strategies=["static", "periodic"])
    fleet = build_fleet(cfg, log=lambda *_: None)
    static = inline_simulation(cfg, "static", fleet)
    for _ in static:
        pass
    assert all(not cam._buf for cam in static.cameras.group.cameras)  # it never uploads: keeps no frames
    periodic = inline_simulation(cfg, "periodic", fleet)
    oldest = []
    for _ in periodic:
        parts = [p for s in periodic.manager.server.stores for p in s.parts]
        if parts:
            oldest.append(min(p.times.min() for p in parts))
    # The server keeps only what the next jobs may read: the lookback (one window) before the
    # oldest request still waiting, and each camera's newest upload.
    lookback = periodic.manager.manager.lookback()
    assert lookback == cfg.window
    assert oldest[0] < cfg.window and oldest[-1] >= cfg.duration - 3 * cfg.window
    assert max(len(s.parts) for s in periodic.manager.server.stores) <= cfg.window / cfg.tick + 2


@pytest.fixture(scope="module")
def two_nodes():
    cluster = start_local_cluster(2, 3)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_camera_groups_spread_over_nodes_and_give_the_single_node_summary(two_nodes, tiny_cfg):
    from ray.util.state import list_actors

    cfg = tiny_cfg(cameras=4, strategies=["edgesync"])
    inline = run_inline(cfg, progress=False, log=lambda *_: None)
    nodes: dict[str, str] = {}

    def after_tick(strategy, k):
        if strategy == "edgesync" and k == 2:
            for a in list_actors(filters=[("class_name", "=", "CameraGroupActor"), ("state", "=", "ALIVE")],
                                 detail=True, limit=100):
                nodes[a.name] = a.node_id

    summary = run_on_ray(cfg, RayOptions(cameras_per_actor=1), progress=False, log=lambda *_: None,
                         after_tick=after_tick)
    mine = {n: node for n, node in nodes.items() if n.startswith("edgesync/")}
    assert len(mine) == 4 and len(set(mine.values())) == 2, nodes  # 4 groups of 1, on both nodes
    pd.testing.assert_frame_equal(inline, summary)
