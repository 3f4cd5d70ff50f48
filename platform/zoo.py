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
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .cache import cache_path
from .distill.frames import GENKD_DIM, FrameHead, train_teacher_head
from .distill.training import DistillConfig
from .models import build_student, build_teacher, predict, to_tensor
from .training import FIT_VERSION, TrainSpec, evaluate, fit
from .world import CONDITIONS, FrameSource, WorldConfig, render_condition_set

__all__ = ["TeacherRecipe", "load_teacher", "train_teacher", "teacher_report",
           "initial_student", "teacher_checkpoint", "teacher_genkd_checkpoint", "load_teacher_genkd",
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
    log(f"training teacher {recipe.arch} on {len(data)} frames x {recipe.epochs} epochs ...")
    fit(model, data.images, data.labels, TrainSpec(epochs=recipe.epochs, batch_size=32), device=device)
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
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(model.state_dict(), tmp)
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


def initial_student(source: FrameSource, arch: str, num_classes: int, past_frames: int,
                    key: tuple, teacher: nn.Module | None = None, device="cpu",
                    epochs: int = 6) -> nn.Module:
    """A camera's first student, trained on ``past_frames`` frames before t=0.

    Frames with unknown labels (a video without a labels file) are labelled by
    ``teacher``. ``key`` identifies the camera's stream for the cache.
    """
    model = build_student(arch, num_classes, seed=0)
    path = cache_path(f"student-{arch}", key, past_frames, epochs, num_classes, CONDITIONS, FIT_VERSION)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device).eval()
    past = source.frames(-past_frames, 0) if _has_past(source) else source.frames(0, past_frames)
    labels = past.labels.copy()
    if (labels < 0).any():
        if teacher is None:
            raise ValueError("unlabelled frames need a teacher to label them")
        labels[labels < 0] = predict(teacher, past.images[labels < 0])[0]
    fit(model, past.images, labels, TrainSpec(epochs=epochs, batch_size=32), device=device)
    _save(model, path)
    return model.to(device).eval()


def _has_past(source: FrameSource) -> bool:
    """Synthetic streams can render before t=0; a video file starts at frame 0."""
    return not hasattr(source, "path")
