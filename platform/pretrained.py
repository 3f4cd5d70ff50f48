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
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .cache import cache_path
from .config import ModelSpec, TeacherSpec
from .distill.frames import GENKD_DIM, FrameHead, train_teacher_head
from .distill.training import DistillConfig
from .models import build_student, build_teacher, default_device, load_teacher_weights, load_weights, to_tensor
from .training import FIT_VERSION, Progress, TrainSpec, evaluate, fit
from .world import CONDITIONS, FrameSource, WorldConfig, render_condition_set

__all__ = ["TeacherRecipe", "load_teacher", "train_teacher", "teacher_report", "StudentJob", "TrainStudents",
           "initial_students", "train_students_here", "given_student", "with_teacher_weights", "teacher_genkd_checkpoint",
           "load_teacher_genkd", "TEACHER_SEED", "HELDOUT_SEED"]

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


def train_teacher(world: WorldConfig, recipe: TeacherRecipe, device="cpu", log=print,
                  spec: TeacherSpec | None = None) -> nn.Module:
    """Train a teacher on every named condition of the world (taking the input ``spec`` gives)."""
    data = render_condition_set(world, list(CONDITIONS), recipe.per_condition, TEACHER_SEED,
                                cameras=recipe.cameras)
    model = build_teacher(replace(spec or TeacherSpec(), arch=recipe.arch), world.num_classes, seed=0)
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


def with_teacher_weights(world: WorldConfig, spec: TeacherSpec | str = "resnet18", device="cpu",
                         log=print) -> TeacherSpec:
    """``spec`` with its ``weights``: as given, else the cached teacher
    trained on every condition of the world (trained on first use)."""
    spec = TeacherSpec(spec) if isinstance(spec, str) else spec
    if spec.weights is not None:
        return spec
    recipe = TeacherRecipe(arch=spec.arch)
    path = cache_path(f"teacher-{spec.arch}", asdict(world), asdict(recipe), CONDITIONS, FIT_VERSION,
                      *_input_key(spec))
    if not os.path.exists(path):
        _save(train_teacher(world, recipe, device, log, spec), path)
        log(f"cached teacher at {path}")
    return replace(spec, weights=path)


def _input_key(spec: ModelSpec) -> list:
    """A model's input in its cache key, where it is not the default (so
    that caches of default models keep their names)."""
    default = ModelSpec()
    same = (spec.input_size, spec.mean, spec.std) == (None, default.mean, default.std)
    return [] if same else [spec.input_size, spec.mean, spec.std]


def load_teacher(world: WorldConfig, spec: TeacherSpec | str = "resnet18", num_classes: int | None = None,
                 device="cpu", log=print) -> nn.Module:
    """The teacher of ``spec`` (its weights, else the cached one, trained on
    first use), scoring ``num_classes`` task classes (default: the world's)."""
    spec = with_teacher_weights(world, spec, device, log)
    return load_teacher_weights(spec, num_classes or world.num_classes).to(device).eval()


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
    head, cvae = train_teacher_head(teacher.to(device), to_tensor(data.images, device, teacher), data.labels, recipe,
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
    arch: ModelSpec | str
    num_classes: int
    past_frames: int
    epochs: int = 6

    def past_range(self) -> tuple[int, int]:
        """Stream frame indices it trains on: the camera's past before t=0,
        else (a recording that starts at its first frame) its first frames."""
        before = getattr(self.source, "past_frames", self.past_frames)
        return (-min(self.past_frames, before), 0) if before else (0, self.past_frames)

    def past(self):
        """The frames it trains on (:meth:`past_range`)."""
        return self.source.frames(*self.past_range())

    def run(self, device="cpu") -> dict:
        """The trained student's weights (on CPU)."""
        model = build_student(self.arch, self.num_classes, seed=0)
        past = self.past()
        if (past.labels < 0).any():
            raise ValueError("a student's past frames need labels (the teacher's, where no CSV gives them)")
        fit(model, past.images, past.labels, TrainSpec(epochs=self.epochs, batch_size=32), device=device)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def cache_path(self, key: tuple) -> str:
        """Its cache file; ``key`` identifies the camera's stream."""
        spec = ModelSpec(self.arch) if isinstance(self.arch, str) else self.arch
        return cache_path(f"student-{spec.arch}", key, self.past_frames, self.epochs, self.num_classes,
                          CONDITIONS, FIT_VERSION, *_input_key(spec))


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


def given_student(spec: ModelSpec, num_classes: int, device="cpu") -> nn.Module:
    """The student ``spec.weights`` holds (every camera starts from it)."""
    model = build_student(spec, num_classes, seed=0)
    load_weights(model, spec.weights, "student")
    return model.to(device).eval()
