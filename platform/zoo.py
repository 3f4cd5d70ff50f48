"""The trained models a simulation starts from, cached on disk.

The teacher is trained once on every condition of the world, on cameras the
simulation never uses; each camera's initial student is trained on that
camera's own past (its initial condition only), as a deployed camera starts
from a model fit to what it has seen. Both are cached by a key of everything
that determines them, so a changed recipe never loads a stale model.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .cache import cache_path
from .distill.frames import GENKD_DIM, FrameHead, train_teacher_head
from .distill.training import DistillConfig
from .models import build_student, build_teacher, default_device, predict, to_tensor
from .training import FIT_VERSION, Progress, TrainSpec, evaluate, fit
from .world import CONDITIONS, FrameSource, WorldConfig, render_condition_set

__all__ = ["TeacherRecipe", "load_teacher", "train_teacher", "teacher_report",
           "StudentJob", "TrainStudents", "initial_students", "train_students_here", "teacher_checkpoint", "teacher_genkd_checkpoint", "load_teacher_genkd",
           "load_checkpoint", "TEACHER_SEED", "HELDOUT_SEED"]

TEACHER_SEED = 10_000   # cameras the teacher is trained on
HELDOUT_SEED = 20_000   # cameras its held-out accuracy is measured on


@dataclass(frozen=True)
class TeacherRecipe:
    """How the teacher is trained.

    Attributes:
        arch: teacher architecture.
        cameras: number of training cameras (backgrounds).
        per_condition: frames per condition per camera.
        epochs: training epochs.
    """

    arch: str = "resnet18"
    cameras: int = 6
    per_condition: int = 80
    epochs: int = 5


def train_teacher(world: WorldConfig, recipe: TeacherRecipe, device="cpu", log=print) -> nn.Module:
    """Train a teacher on every named condition of the world."""
    data = render_condition_set(world, list(CONDITIONS), recipe.per_condition, TEACHER_SEED,
                                cameras=recipe.cameras)
    model = build_teacher(recipe.arch, world.num_classes, seed=0)
    log(f"training teacher {recipe.arch} on {len(data)} frames x {recipe.epochs} epochs (cached for later runs) ...")
    fit(model, data.images, data.labels, TrainSpec(epochs=recipe.epochs, batch_size=32), device=device,
        plugins=[Progress("  teacher", recipe.epochs, log)])
    return model


def teacher_report(model: nn.Module, world: WorldConfig, per_condition: int = 60,
                   cameras: int = 2, device="cpu") -> dict[str, float]:
    """Held-out accuracy per condition, on cameras the teacher never saw."""
    names = list(CONDITIONS)
    data = render_condition_set(world, names, per_condition, HELDOUT_SEED, cameras=cameras)
    labels = data.labels.reshape(cameras, len(names), per_condition)
    images = data.images.reshape(cameras, len(names), per_condition, *data.images.shape[1:])
    return {name: float(np.mean([evaluate(model, images[c, k], labels[c, k], device)[0]
                                 for c in range(cameras)]))
            for k, name in enumerate(names)}


def teacher_checkpoint(world: WorldConfig, arch: str = "resnet18", checkpoint: str | None = None,
                       device="cpu", log=print) -> str:
    """Path of the teacher's weights: ``checkpoint`` if given, else the cached
    one (trained on first use)."""
    if checkpoint is not None:
        return checkpoint
    recipe = TeacherRecipe(arch=arch)
    path = cache_path(f"teacher-{arch}", asdict(world), asdict(recipe), CONDITIONS, FIT_VERSION)
    if not os.path.exists(path):
        _save(train_teacher(world, recipe, device, log), path)
        log(f"cached teacher at {path}")
    return path


def load_teacher(world: WorldConfig, arch: str = "resnet18", checkpoint: str | None = None,
                 device="cpu", log=print) -> nn.Module:
    """The teacher: from ``checkpoint`` if given, else cached (trained on first use)."""
    model = build_teacher(arch, world.num_classes)
    load_checkpoint(model, teacher_checkpoint(world, arch, checkpoint, device, log))
    return model.to(device).eval()


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a ``state_dict`` file; a missing or mismatched one is one clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # torch raises many types for a bad file
        raise ValueError(f"teacher checkpoint {path} does not fit a "
                         f"{type(model).__name__}: {str(e).splitlines()[0]}") from None


def _save(model: nn.Module, path: str) -> None:
    _save_state(model.state_dict(), path)


def _save_state(state: dict, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def teacher_genkd_checkpoint(world: WorldConfig, teacher: nn.Module, teacher_path: str,
                             device="cpu", log=print) -> str:
    """Path of seed 2's head and CVAE on ``teacher`` (weights in ``teacher_path``),
    trained once on the teacher's own training frames (its backbone frozen)
    and cached by the teacher file's content and the recipe."""
    recipe, frames = DistillConfig(epochs=10), TeacherRecipe()
    with open(teacher_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    path = cache_path("teacher-genkd", digest, asdict(world), asdict(recipe), frames.cameras,
                      frames.per_condition, GENKD_DIM)
    if os.path.exists(path):
        return path
    data = render_condition_set(world, list(CONDITIONS), frames.per_condition, TEACHER_SEED,
                                cameras=frames.cameras)
    log(f"training seed 2's head and CVAE on the frozen teacher ({len(data)} frames) ...")
    head, cvae = train_teacher_head(teacher.to(device), to_tensor(data.images, device), data.labels, recipe,
                                    log=lambda _msg: None)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({"head": head.state_dict(), "cvae": cvae.state_dict(),
                "in_channels": head.project[0].in_channels,
                "num_classes": head.fc.out_features, "spatial": head.spatial}, tmp)
    os.replace(tmp, path)
    return path


def load_teacher_genkd(path: str, device="cpu") -> tuple[FrameHead, dict]:
    """Seed 2's teacher head (frozen, on ``device``) and its CVAE's weights (CPU)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    head = FrameHead(saved["in_channels"], saved["num_classes"], tuple(saved["spatial"]))
    head.load_state_dict(saved["head"])
    return head.to(device).eval().requires_grad_(False), saved["cvae"]


@dataclass
class StudentJob:
    """Training one camera's first student on ``past_frames`` frames before
    t=0 (frames with unknown labels, from a video without a labels file, are
    labelled by ``teacher``); self-contained, so it runs here or in a Ray task."""

    source: FrameSource
    arch: str
    num_classes: int
    past_frames: int
    epochs: int = 6
    teacher: nn.Module | None = None

    def run(self, device="cpu") -> dict:
        """The trained student's weights (on CPU)."""
        model = build_student(self.arch, self.num_classes, seed=0)
        src = self.source
        past = src.frames(-self.past_frames, 0) if _has_past(src) else src.frames(0, self.past_frames)
        labels = past.labels.copy()
        if (labels < 0).any():
            if self.teacher is None:
                raise ValueError("unlabelled frames need a teacher to label them")
            labels[labels < 0] = predict(self.teacher.to(device), past.images[labels < 0])[0]
        fit(model, past.images, labels, TrainSpec(epochs=self.epochs, batch_size=32), device=device)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def cache_path(self, key: tuple) -> str:
        """Its cache file; ``key`` identifies the camera's stream."""
        return cache_path(f"student-{self.arch}", key, self.past_frames, self.epochs, self.num_classes,
                          CONDITIONS, FIT_VERSION)


TrainStudents = Callable[[list[StudentJob], Callable[[str], None]], Iterator[tuple[int, dict]]]
"""Runs student jobs (here, or as Ray tasks): yields ``(job index, weights)`` as each finishes."""


def train_students_here(jobs: list[StudentJob], log: Callable[[str], None] = print) -> Iterator[tuple[int, dict]]:
    """:data:`TrainStudents` in this process, one after another."""
    device = default_device()
    for i, job in enumerate(jobs):
        yield i, job.run(device)


def initial_students(jobs: list[StudentJob], keys: list[tuple], train: TrainStudents = train_students_here,
                     device="cpu", log: Callable[[str], None] = print) -> list[nn.Module]:
    """Each camera's first student: from the cache, else trained by ``train``
    (and cached), showing how many are left."""
    paths = [job.cache_path(key) for job, key in zip(jobs, keys)]
    missing = [paths.index(p) for p in dict.fromkeys(paths) if not os.path.exists(p)]
    if missing:
        log(f"training {len(missing)} of {len(jobs)} initial students (cached for later runs) ...")
        started, shown = time.time(), time.time()
        for n, (k, state) in enumerate(train([jobs[i] for i in missing], log), 1):
            _save_state(state, paths[missing[k]])
            if time.time() - shown > 10 or n == len(missing):
                shown = time.time()
                log(f"  initial students: {n}/{len(missing)} trained, {time.time() - started:.0f} s")
    students = []
    for job, path in zip(jobs, paths):
        model = build_student(job.arch, job.num_classes, seed=0)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        students.append(model.to(device).eval())
    return students


def _has_past(source: FrameSource) -> bool:
    """Synthetic streams can render before t=0; a video file starts at frame 0."""
    return not hasattr(source, "path")
