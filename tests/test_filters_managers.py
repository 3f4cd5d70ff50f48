"""Unit behaviour of the sample filters and the training managers."""
import numpy as np
import pytest
import torch

from driftlab.platform.config import EdgeSyncParams, SimConfig
from driftlab.platform.filters import Candidates, class_mix, edgesync_filter, mix_shift, uniform_filter
from driftlab.platform.models import build_student
from driftlab.platform.scheduling import Request, Samples, SampleStore, closest, condition_stats, share_gpu
from driftlab.platform.server import Server
from driftlab.platform.strategies import parse_strategy
from driftlab.platform.strategies.baselines import PeriodicManager
from driftlab.platform.strategies.edgesync import EdgeSyncManager
from driftlab.platform.strategies.ekya import EkyaManager, extrapolate

from conftest import SMALL_WORLD


def cands(n=40, confs=None, preds=None, k=4):
    return Candidates(times=np.arange(n, dtype=float), preds=np.zeros(n, np.int64) if preds is None else preds,
                      confs=np.full(n, 0.9) if confs is None else confs, prev_mix=np.full(k, 1 / k))


def test_uniform_filter_spreads_picks_over_the_window():
    picks = uniform_filter(cands(100), 10, np.random.default_rng(0))
    assert len(picks) == 10 and len(set(picks)) == 10
    assert np.all(np.diff(picks) >= 5)  # one per tenth of the window


def test_edgesync_filter_prefers_uncertain_recent_frames_and_spaces_them():
    confs = np.full(40, 0.95)
    confs[[5, 6, 7, 30]] = 0.2
    picks = edgesync_filter(cands(40, confs), budget=3, now=40.0, tau=10.0, w_conf=1.0,
                            w_time=1.0, w_novel=0.0, min_gap=4)
    assert 30 in picks and 7 in picks     # the uncertain frames ...
    assert not {5, 6} & set(picks)       # ... but not near-duplicates of frame 7
    recent = edgesync_filter(cands(40), budget=2, now=40.0, tau=10.0, w_conf=1.0, w_time=1.0,
                             w_novel=0.0, min_gap=1)
    assert set(recent) == {38, 39}        # equal confidence: the newest win


def test_edgesync_filter_novelty_favours_a_rising_class():
    preds = np.zeros(40, np.int64)
    preds[20:24] = 3
    c = Candidates(np.arange(40.0), preds, np.full(40, 0.9), prev_mix=np.array([1.0, 0, 0, 0]))
    picks = edgesync_filter(c, budget=2, now=40.0, tau=1e9, w_conf=0, w_time=0, w_novel=1, min_gap=1)
    assert set(picks) <= set(range(20, 24))


def test_class_mix_shift():
    assert mix_shift(class_mix(np.array([0, 0, 1, 1]), 4), class_mix(np.array([0, 0, 1, 1]), 4)) == 0
    assert mix_shift(class_mix(np.array([0, 0]), 4), class_mix(np.array([3, 3]), 4)) == 1


def req(cam, cutoff=60.0, acc=0.5, mix=0.0, last=0.0, ready=None, condition=None):
    return Request(cam, cutoff, cutoff if ready is None else ready, acc, mix, last, condition)


class NoProfiler:
    def num_samples(self, *a):
        return 20

    def profile(self, camera, since, until, layers, epochs, fraction=1.0, min_samples=8):
        return ([0.4, 0.5, 0.6, 0.65] if layers == "all" else [0.4, 0.41, 0.42, 0.43]), 30


def test_periodic_is_first_come_first_served():
    s = PeriodicManager(SimConfig())
    for r in [req(2, 60), req(0, 120), req(1, 60)]:
        s.submit(r)
    order = []
    while s.pending:
        order += [(j.request.camera, j.request.cutoff) for j in s.next_batch(200.0, NoProfiler())]
    assert order == [(1, 60), (2, 60), (0, 120)]


def test_edgesync_orders_by_priority_skips_accurate_and_merges_stale():
    s = EdgeSyncManager(SimConfig())
    s.submit(req(0, 60, acc=0.7))
    s.submit(req(1, 60, acc=0.3))
    s.submit(req(1, 120, acc=0.4))   # newer request of camera 1 supersedes the older
    s.submit(req(2, 120, acc=0.99))  # accurate enough: no job
    jobs = s.next_batch(120.0, NoProfiler())
    assert [(j.request.camera, j.request.cutoff) for j in jobs] == [(1, 120)]
    assert jobs[0].tau is not None and jobs[0].since == 120 - s.cfg.edgesync.horizon
    jobs = s.next_batch(120.0, NoProfiler())
    assert [j.request.camera for j in jobs] == [0]
    assert s.pending == [] and s.next_batch(120.0, NoProfiler()) == []
    never = EdgeSyncManager(SimConfig(edgesync=EdgeSyncParams(skip_accuracy=1.01)))
    never.submit(req(2, 120, acc=1.0))  # all of an upload agreeing still gets a job
    assert [j.request.camera for j in never.next_batch(120.0, NoProfiler())] == [2]


def test_edgesync_leaves_a_camera_alone_until_it_drifts_from_its_first_condition():
    day = np.full(6, 0.5)
    s = EdgeSyncManager(SimConfig())
    s.submit(req(0, 20, condition=day))            # the condition its initial model was fit to
    s.submit(req(1, 20, condition=day))
    assert s.next_batch(20.0, NoProfiler()) == [] and s.pending == []
    s.submit(req(0, 40, condition=day + 0.02))     # within home_distance (0.06): still at home
    s.submit(req(1, 40, condition=day - 0.1))      # dusk: drifted
    assert [j.request.camera for j in s.next_batch(40.0, NoProfiler())] == [1]
    assert s.pending == []
    s.submit(req(1, 60, condition=day))            # back in the day, but its model was retrained
    assert [j.request.camera for j in s.next_batch(60.0, NoProfiler())] == [1]
    for off in (EdgeSyncManager(SimConfig(edgesync=EdgeSyncParams(home_distance=0.0))),
                parse_strategy("edgesync+cp").training_manager(SimConfig())):   # its first upload comes after a change
        off.submit(req(0, 20, condition=day))
        assert [j.request.camera for j in off.next_batch(20.0, NoProfiler())] == [0]


def test_edgesync_staleness_raises_priority():
    s = EdgeSyncManager(SimConfig(edgesync=EdgeSyncParams(w_stale=1.0)))
    assert s.priority(req(0, last=0.0), 600) > s.priority(req(0, last=500.0), 600)


def test_ekya_plans_the_window_jointly_with_profiled_configs():
    s = EkyaManager(SimConfig(cameras=2))
    s.submit(req(0, 60, acc=0.3))
    s.submit(req(1, 60, acc=0.3, ready=65.0))
    assert s.next_batch(61.0, NoProfiler()) == []       # waits for every label
    jobs = s.next_batch(65.0, NoProfiler())
    assert sorted(j.request.camera for j in jobs) == [0, 1]
    assert sum(j.share for j in jobs) == pytest.approx(1.0)
    assert all(j.overhead_s > 0 for j in jobs)          # profiling is charged
    assert all(j.spec.layers == "all" for j in jobs)    # the better profiled config


def test_ekya_curve_extrapolation_increases_with_epochs():
    curve = [0.4, 0.5, 0.6, 0.65]
    assert extrapolate(curve, 10) > extrapolate(curve, 3) > 0.5
    assert extrapolate(curve, 0) == pytest.approx(0.4, abs=0.05)   # starts where the model is


def test_ekya_prior_is_scaled_down_by_a_poor_profile():
    """The authors' prior (0.95 after 30 epochs) scaled by how far the profile
    falls below it: a profile that does not learn predicts less, most near
    its own points (the prior still dominates far from them)."""
    good, flat = [0.4, 0.55, 0.65, 0.7, 0.74, 0.77], [0.4] * 6   # 5 profiled epochs
    assert extrapolate(good, 30) > 0.85
    assert extrapolate(flat, 5) < extrapolate(good, 5) - 0.2      # near the profiled points
    assert extrapolate(flat, 30) < extrapolate(good, 30) - 0.08   # the prior's end, scaled down


def test_ekya_profile_on_part_of_the_window_counts_in_window_epochs(monkeypatch):
    """A profile that trained on a third of the window reached its accuracy
    after a third of the sample visits a whole-window epoch costs: it
    predicts more at the same window epochs than one run on all of it."""
    good = [0.4, 0.55, 0.65, 0.7, 0.74, 0.77]
    assert extrapolate(good, 5 / 3, step=1 / 3) == pytest.approx(0.77, abs=0.04)   # its own last point
    assert extrapolate(good, 2, step=1 / 3) > extrapolate(good, 2) + 0.05
    import driftlab.platform.strategies.ekya as ekya

    steps = []
    monkeypatch.setattr(ekya, "extrapolate", lambda curve, x, step: steps.append(step) or extrapolate(curve, x, step))
    s = EkyaManager(SimConfig(cameras=1))
    s.submit(req(0, 60, acc=0.3))
    s.next_batch(60.0, NoProfiler())   # 3 profiled epochs cost 30 sample-epochs of a 20-sample window
    assert steps and steps == pytest.approx([0.5] * len(steps))


def test_ekya_profile_on_the_server_trains_on_its_share_of_the_window():
    """A 24-sample window: a quarter held out, 10 % (at least 8) of the rest
    trained on, so a profiled epoch is 8/24 of a window epoch."""
    cfg = SimConfig(world=SMALL_WORLD, cameras=1)
    torch.manual_seed(0)
    server = Server(cfg, [build_student(cfg.student, SMALL_WORLD.num_classes)])
    images = np.random.default_rng(0).integers(0, 255, (24, SMALL_WORLD.size, SMALL_WORLD.size, 3), np.uint8)
    logits = np.eye(SMALL_WORLD.num_classes, dtype=np.float32)[np.arange(24) % SMALL_WORLD.num_classes]
    server.stores[0].add(images, {"logits": logits}, np.arange(24.0))
    curve, cost = server.profile(0, -1.0, 24.0, "head", 5, fraction=0.1, min_samples=8)
    assert len(curve) == 6 and cost == 5 * 8 and server.num_samples(0, -1.0, 24.0) == 24


def test_share_gpu_is_work_conserving():
    assert share_gpu(0.0, [10.0], [1.0], 1.0) == [10.0]
    a, b = share_gpu(0.0, [2.0, 10.0], [0.5, 0.5], 1.0)
    assert a == pytest.approx(4.0) and b == pytest.approx(12.0)  # total work / GPU
    assert share_gpu(5.0, [4.0, 4.0], [0.5, 0.5], 2.0) == pytest.approx([9.0, 9.0])


def test_sample_store_selects_by_time_and_labels_by_the_teachers_argmax():
    st = SampleStore()
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0]], np.float32)
    st.add(np.zeros((3, 2, 2, 3), np.uint8), {"logits": logits}, np.array([10.0, 20.0, 30.0]))
    s = st.select(10.0, 30.0)
    assert s.labels.tolist() == [1, 2] and s.times.tolist() == [20.0, 30.0]
    np.testing.assert_array_equal(s.logits, logits[1:])
    assert len(SampleStore().select(0.0, 1.0).labels) == 0


def test_sample_store_hides_labels_not_back_yet_and_finds_the_newest_upload():
    st = SampleStore()
    logits = np.eye(3, dtype=np.float32)
    st.add(np.zeros((3, 2, 2, 3), np.uint8), {"logits": logits}, np.array([5.0, 10.0, 20.0]), ready=21.0)
    st.add(np.ones((3, 2, 2, 3), np.uint8), {"logits": logits}, np.array([25.0, 30.0, 40.0]), ready=41.0,
           columns={"condition": np.ones((3, 6), np.float32)})
    assert set(st.select(0.0, 40.0).columns) == set()                # a column only where every part has it
    assert set(st.select(24.0, 40.0).columns) == {"condition"}
    assert st.select(0.0, 40.0, ready_by=30.0).times.tolist() == [5.0, 10.0, 20.0]
    assert st.select(8.0, 40.0, ready_by=41.0).times.tolist() == [10.0, 20.0, 25.0, 30.0, 40.0]
    assert st.newest(40.0).times.tolist() == [25.0, 30.0, 40.0]
    assert st.newest(39.0).times.tolist() == [5.0, 10.0, 20.0]
    assert len(st.newest(4.0).labels) == 0


def test_closest_borrows_the_samples_taken_in_the_reference_condition():
    levels = np.array([200, 40, 210, 50, 45, 220], np.uint8)     # bright (day) and dark (night)
    images = np.broadcast_to(levels[:, None, None, None], (6, 4, 4, 3)).copy()
    pool = Samples(images, np.arange(6), np.arange(6.0), np.zeros((6, 6), np.float32),
                   {"condition": condition_stats(images)})
    night = condition_stats(np.full((2, 4, 4, 3), 42, np.uint8))
    assert closest(pool, night, 3).times.tolist() == [1.0, 3.0, 4.0]   # the dark ones, in pool order
    assert closest(pool, night, 10).times.tolist() == list(range(6))   # fewer than asked: all
    assert len(closest(pool, night, 0).labels) == 0
    assert len(closest(pool, night[:0], 3).labels) == 0                # nothing to compare with


def test_strategy_names_compose_camera_components_and_bad_ones_are_clear_errors():
    assert parse_strategy("edgesync").components == {"refit"}          # its paper-faithful default
    assert parse_strategy("ams").components == frozenset()
    assert parse_strategy("ams+refit+cp").components == {"refit", "cp"}
    assert parse_strategy("edgesync-refit").components == frozenset()
    assert parse_strategy("static+refit").components == {"refit"}      # a camera-side ablation
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_strategy("nope")
    with pytest.raises(ValueError, match="unknown camera component 'bn'"):
        parse_strategy("ams+bn")
    with pytest.raises(ValueError, match="static never retrains"):
        parse_strategy("static+cp")
