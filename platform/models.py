"""Student and teacher models: any torchvision classification architecture.

The camera runs a small student; the server's teacher is a larger network,
trained on every condition of the world or given as a weights file
(:class:`~driftlab.platform.config.ModelSpec`). Weights never come from a hub.
Each model carries its input (size and normalisation) as ``model.input_spec``,
which :func:`to_tensor` applies.
"""
from __future__ import annotations

import copy
import warnings
import zipfile

import numpy as np
import torch
from torch import nn
from torchvision import models as tvm

from .config import ModelSpec, TeacherSpec

__all__ = ["architectures", "build_student", "build_teacher", "load_weights", "load_teacher_weights",
           "ClassMap", "to_tensor", "logits", "predict", "from_logits", "predict_stacked", "default_device",
           "count_params", "clone", "recalibrate_bn"]


def architectures() -> list[str]:
    """torchvision's classification architectures (what ``arch`` may name)."""
    return tvm.list_models(module=tvm)


def _build(spec: ModelSpec | str, num_classes: int, seed: int) -> nn.Module:
    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    if spec.arch not in architectures():
        raise ValueError(f"unknown architecture {spec.arch!r}: not a torchvision classification model "
                         f"(e.g. {', '.join(['resnet18', 'resnet50', 'mobilenet_v3_small', 'efficientnet_b0'])}; "
                         f"torchvision.models.list_models(torchvision.models) lists all)")
    torch.manual_seed(seed)
    model = tvm.get_model(spec.arch, num_classes=num_classes)
    model.input_spec = spec
    return model


def build_student(spec: ModelSpec | str = "mobilenet_v3_small", num_classes: int = 6, seed: int = 0) -> nn.Module:
    """A freshly initialised student (``spec``: a :class:`ModelSpec` or an architecture name).

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, tuned for long
    ImageNet runs; the short continual-learning jobs here need the usual 0.1 so
    that running statistics follow the drifting data.
    """
    model = _build(spec, num_classes, seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def build_teacher(spec: ModelSpec | str = "resnet18", num_classes: int = 6, seed: int = 0) -> nn.Module:
    """A freshly initialised teacher (``spec``: a :class:`ModelSpec` or an architecture name)."""
    return _build(spec, num_classes, seed)


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_state(path: str, what: str) -> dict:
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ValueError(f"{what} weights {path} cannot be read: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{what} weights {path} hold a {type(state).__name__}, not a state_dict")
    return state


def load_weights(model: nn.Module, path: str, what: str = "model") -> None:
    """Load a ``state_dict`` file into ``model``; a missing file, or weights
    that do not fit (the first mismatched key named), is one clear error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a state_dict, or it does not fit the architecture.
    """
    state = _read_state(path, what)
    mine = model.state_dict()
    for key, value in mine.items():
        if key not in state:
            raise ValueError(f"{what} weights {path} do not fit {type(model).__name__}: "
                             f"key {key!r} missing")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{what} weights {path} do not fit {type(model).__name__}: key {key!r} "
                             f"has shape {tuple(state[key].shape)}, the model {tuple(value.shape)}")
    extra = [k for k in state if k not in mine]
    if extra:
        raise ValueError(f"{what} weights {path} do not fit {type(model).__name__}: "
                         f"unexpected key {extra[0]!r}")
    model.load_state_dict(state)


class ClassMap(nn.Module):
    """A classifier's scores regrouped into the task's classes: task class
    ``k``'s logit is the log of the summed probabilities of the model's
    outputs ``groups[k]`` (an ImageNet teacher's car, taxi and van outputs
    making one "car")."""

    def __init__(self, model: nn.Module, groups: tuple[tuple[int, ...], ...]):
        super().__init__()
        self.model, self.groups = model, [list(g) for g in groups]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x).log_softmax(dim=1)
        return torch.stack([z[:, g].logsumexp(dim=1) for g in self.groups], dim=1)


class _Scripted(nn.Module):
    """A TorchScript model as a plain module (so it can carry its input)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def load_teacher_weights(spec: TeacherSpec, num_classes: int) -> nn.Module:
    """The teacher ``spec.weights`` holds (a state_dict for ``spec.arch``, its
    output size read from the file; or a whole model: TorchScript, or
    ``torch.export`` as ``.pt2``), its outputs
    regrouped by ``spec.class_map`` into ``num_classes`` task classes.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_weights`; a class map
            that points outside the teacher's outputs, or a teacher whose
            outputs are not the task's classes without one.
    """
    if spec.weights.endswith(".pt2") or _is_torchscript(spec.weights):
        try:
            if spec.weights.endswith(".pt2"):   # torch.export.save
                model = _Scripted(torch.export.load(spec.weights).module())
            else:
                with warnings.catch_warnings():   # torch.jit is deprecated, its files are still common
                    warnings.simplefilter("ignore", FutureWarning)
                    model = _Scripted(torch.jit.load(spec.weights, map_location="cpu"))
        except Exception as e:
            raise ValueError(f"teacher weights {spec.weights}: not a loadable exported or TorchScript "
                             f"model: {str(e).splitlines()[0]}") from None
        with torch.no_grad():
            outputs = int(model(torch.zeros(1, 3, spec.input_size or 64, spec.input_size or 64)).shape[1])
    else:
        state = _read_state(spec.weights, "teacher")
        probe = build_teacher(spec, 1)
        head = [k for k, v in probe.state_dict().items() if v.ndim >= 1 and v.shape[0] == 1 and k.endswith("weight")]
        outputs = int(state[head[-1]].shape[0]) if head and head[-1] in state else num_classes
        model = build_teacher(spec, outputs)
        load_weights(model, spec.weights, "teacher")
    if spec.class_map is not None:
        for name, group in zip(spec.classes, spec.class_map):
            if max(group) >= outputs:
                raise ValueError(f"teacher.class_map for {name!r} points at output {max(group)}; "
                                 f"the teacher {spec.weights} has {outputs} outputs")
        model = ClassMap(model, spec.class_map)
    elif outputs != num_classes:
        raise ValueError(f"the teacher {spec.weights} has {outputs} outputs, the task {num_classes} "
                         f"classes: set teacher.class_map (its outputs per task class)")
    model.input_spec = spec
    return model.eval()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DEFAULT_INPUT = ModelSpec()


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu", model: nn.Module | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) frames -> float (N, 3, S, S) as ``model`` takes
    them (its ``input_spec``: resized to ``input_size`` if that differs,
    normalised by ``mean`` and ``std``; without one, the synthetic world's
    normalisation at the frames' size)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {images.shape}")
    spec = getattr(model, "input_spec", None) or _DEFAULT_INPUT
    # Frames from Ray's object store are read-only; torch wants writable memory.
    x = torch.from_numpy(np.require(images, requirements="CW")).to(device)
    x = x.permute(0, 3, 1, 2).float() / 255.0
    if spec.input_size is not None and x.shape[-1] != spec.input_size and len(x):
        x = nn.functional.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear",
                                      antialias=True, align_corners=False)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def logits(model: nn.Module, images: np.ndarray, batch_size: int = 256,
           device: torch.device | str | None = None) -> np.ndarray:
    """Raw class scores (N, K) for uint8 frames."""
    device = device or next(model.parameters()).device
    model.eval()
    out = [model(to_tensor(images[i:i + batch_size], device, model)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    if not out:
        return np.empty((0, _num_outputs(model)), np.float32)
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
    x = torch.stack([to_tensor(im, device, models[0]) for im in images])
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


def _num_outputs(model: nn.Module) -> int:
    """How many classes a classifier scores."""
    if isinstance(model, ClassMap):
        return len(model.groups)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


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
        model(to_tensor(images, device, model))
    except _Reached:
        pass
    finally:
        for m, hook, momentum in zip(norms, hooks, saved):
            hook.remove()
            m.momentum = momentum
        model.eval()
