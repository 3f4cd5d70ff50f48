"""Student and teacher models: torchvision architectures, no pretrained weights.

The camera runs a small student; the server's teacher is a larger network
trained on every condition of the world. Weights never come from a hub.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision import models as tvm

__all__ = ["STUDENTS", "TEACHERS", "build_student", "build_teacher", "to_tensor", "logits", "predict",
           "from_logits", "predict_stacked", "default_device", "count_params", "clone", "recalibrate_bn"]

STUDENTS: dict[str, Callable[[int], nn.Module]] = {
    "mobilenet_v3_small": lambda k: tvm.mobilenet_v3_small(num_classes=k),
    "shufflenet_v2_x0_5": lambda k: tvm.shufflenet_v2_x0_5(num_classes=k),
}
TEACHERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": lambda k: tvm.resnet18(num_classes=k),
    "resnet34": lambda k: tvm.resnet34(num_classes=k),
}

# Per-channel statistics of the synthetic world's frames, fixed so that every
# model (and every camera) normalises identically.
_MEAN = torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1)
_STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


def _build(table: dict, kind: str, arch: str, num_classes: int, seed: int) -> nn.Module:
    if arch not in table:
        raise ValueError(f"unknown {kind} architecture {arch!r}; choose one of: {', '.join(table)}")
    torch.manual_seed(seed)
    return table[arch](num_classes)


def build_student(arch: str = "mobilenet_v3_small", num_classes: int = 6, seed: int = 0) -> nn.Module:
    """A freshly initialised student of architecture ``arch``.

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, tuned for long
    ImageNet runs; the short continual-learning jobs here need the usual 0.1 so
    that running statistics follow the drifting data.
    """
    model = _build(STUDENTS, "student", arch, num_classes, seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def build_teacher(arch: str = "resnet18", num_classes: int = 6, seed: int = 0) -> nn.Module:
    """A freshly initialised teacher of architecture ``arch``."""
    return _build(TEACHERS, "teacher", arch, num_classes, seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) frames -> normalised float (N, 3, H, W)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {images.shape}")
    # Frames from Ray's object store are read-only; torch wants writable memory.
    x = torch.from_numpy(np.require(images, requirements="CW")).to(device)
    x = x.permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN.to(device)) / _STD.to(device)


@torch.no_grad()
def logits(model: nn.Module, images: np.ndarray, batch_size: int = 256,
           device: torch.device | str | None = None) -> np.ndarray:
    """Raw class scores (N, K) for uint8 frames."""
    device = device or next(model.parameters()).device
    model.eval()
    out = [model(to_tensor(images[i:i + batch_size], device)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    if not out:
        return np.empty((0, _classifier(model).out_features), np.float32)
    return np.concatenate(out)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256,
            device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class predictions and their softmax confidence for uint8 frames."""
    return from_logits(logits(model, images, batch_size, device))


@torch.no_grad()
def predict_stacked(models: list[nn.Module], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Several models of one architecture, each on its own uint8 frames
    ``images`` (M, N, H, W, 3), as one vectorised call
    (``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``, in
    eval mode); predictions and confidences (M, N) as :func:`predict` gives
    them, up to float rounding."""
    from torch.func import functional_call, stack_module_state

    device = next(models[0].parameters()).device
    for m in models:
        m.eval()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.stack([to_tensor(im, device) for im in images])
    z = torch.vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
    out = [from_logits(zi) for zi in z.float().cpu().numpy()]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def from_logits(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, softmax confidence) of each row of logits."""
    z = np.asarray(z, np.float32)
    if len(z) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return z.argmax(axis=1).astype(np.int64), (e.max(axis=1) / e.sum(axis=1)).astype(np.float32)


def _classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer of a torchvision classifier (``fc`` or ``classifier[-1]``)."""
    return model.fc if hasattr(model, "fc") else model.classifier[-1]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


class _Reached(Exception):
    """Raised by a hook once the forward pass has gone as deep as it needs."""


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: np.ndarray, layers: int) -> None:
    """Set the statistics of ``model``'s first ``layers`` BatchNorm layers to
    those of ``images`` (AdaBN on the shallow layers only).

    Light, weather, noise and colour cast move low-level statistics that the
    first layers normalise; they say nothing about the class, so the camera
    can refit them from its own unlabelled frames. Deeper layers are left
    alone: a few seconds of video hold only a few objects, and their
    statistics there would normalise the class away. The forward pass stops
    once every chosen layer has run."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][:layers]
    if not norms or len(images) < 2:
        return
    device = next(model.parameters()).device
    seen: set[int] = set()

    def reached(module: nn.Module, *_) -> None:
        seen.add(id(module))
        if len(seen) == len(norms):
            raise _Reached

    saved = [m.momentum for m in norms]
    model.eval()
    hooks = [m.register_forward_hook(reached) for m in norms]
    for m in norms:
        m.train()
        m.momentum = 1.0  # the running statistics become this batch's
    try:
        model(to_tensor(images, device))
    except _Reached:
        pass
    finally:
        for m, hook, momentum in zip(norms, hooks, saved):
            hook.remove()
            m.momentum = momentum
        model.eval()
