"""Shared fixtures: a small world, a quickly trained teacher checkpoint, a private cache."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from driftlab.platform.config import SimConfig, TeacherSpec, config_from_dict  # noqa: E402
from driftlab.platform.world import WorldConfig  # noqa: E402
from driftlab.platform.pretrained import TeacherRecipe, train_teacher  # noqa: E402

SMALL_WORLD = WorldConfig(size=32, num_classes=4, fps=2.0, object_seconds=4.0)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Models trained by tests go to a fresh cache, never the user's."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DRIFTLAB_CACHE")
    os.environ["DRIFTLAB_CACHE"] = str(path)
    torch.set_num_threads(2)
    yield path
    if old is None:
        os.environ.pop("DRIFTLAB_CACHE", None)
    else:
        os.environ["DRIFTLAB_CACHE"] = old


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    """A small teacher for the small world (a few seconds of training)."""
    model = train_teacher(SMALL_WORLD, TeacherRecipe(cameras=2, per_condition=12, epochs=1),
                          log=lambda *_: None)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def tiny_cfg(teacher_ckpt):
    """A run of every strategy that takes seconds."""
    def make(**overrides) -> SimConfig:
        base = SimConfig(world=SMALL_WORLD, cameras=2, duration=120.0, window=40.0, tick=10.0,
                         warmup=40.0, teacher=TeacherSpec(weights=teacher_ckpt), fixed_epochs=2,
                         scenario="day_night")
        return config_from_dict(overrides, base)
    return make
