import numpy as np
import pytest

from driftlab.platform.world import (CONDITIONS, CameraStream, Condition, WorldConfig,
                                     get_scenario, render_condition_set)

from conftest import SMALL_WORLD


def test_stream_is_deterministic_and_random_access():
    sc = get_scenario("weather")
    a = CameraStream(SMALL_WORLD, sc, camera=1, num_cameras=3, seed=5, duration=100)
    b = CameraStream(SMALL_WORLD, sc, camera=1, num_cameras=3, seed=5, duration=100)
    fa, fb = a.frames(10, 30), b.frames(10, 30)
    np.testing.assert_array_equal(fa.images, fb.images)
    np.testing.assert_array_equal(fa.labels, fb.labels)
    # Random access: frame 20 rendered alone equals frame 20 of the range.
    np.testing.assert_array_equal(a.frames(20, 21).images[0], fa.images[10])
    other = CameraStream(SMALL_WORLD, sc, camera=2, num_cameras=3, seed=5, duration=100)
    assert not np.array_equal(other.frames(10, 30).images, fa.images)


def test_objects_persist_then_change():
    s = CameraStream(SMALL_WORLD, get_scenario("day_night"), 0, 1, seed=1, duration=200)
    labels = s.frames(0, 80).labels
    per_object = int(SMALL_WORLD.object_seconds * SMALL_WORLD.fps)
    for k in range(0, 80, per_object):  # one object (one label) per span
        assert len(set(labels[k:k + per_object])) == 1
    assert len(set(labels)) > 1


@pytest.mark.parametrize("name,check", [
    ("night", lambda day, x: x.mean() < 0.6 * day.mean()),
    ("fog", lambda day, x: x.std() < 0.8 * day.std()),
    ("snow", lambda day, x: (x > 240).mean() > (day > 240).mean() + 0.005),
])
def test_conditions_change_pixel_statistics(name, check):
    data = render_condition_set(SMALL_WORLD, ["day", name], 30, seed=3)
    day, other = data.images[:30].astype(float), data.images[30:].astype(float)
    assert check(day, other)


def test_scenario_drifts_at_camera_specific_times():
    sc = get_scenario("day_night")
    cams = [CameraStream(SMALL_WORLD, sc, i, 4, seed=0, duration=600) for i in range(4)]
    t = np.arange(0, 600, 5.0)
    first_drift = [t[c.drifted(t)][0] for c in cams]
    assert first_drift == sorted(first_drift) and len(set(first_drift)) == 4
    assert cams[0].condition_at(300) != cams[0].condition_at(0)


def test_condition_blend_is_linear():
    day, night = CONDITIONS["day"], CONDITIONS["night"]
    mid = day.blend(night, 0.5)
    assert mid.light == pytest.approx((day.light + night.light) / 2)
    assert day.blend(night, 0.0) == day and day.blend(night, 1.0) == night
    mixed = Condition(class_mix=(1, 0, 0, 0)).blend(Condition(), 0.5)
    assert mixed.class_mix == pytest.approx((1.0, 0.5, 0.5, 0.5))


def test_bad_world_and_scenario_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        WorldConfig(num_classes=40)
    with pytest.raises(ValueError, match="unknown scenario"):
        get_scenario("volcano")
