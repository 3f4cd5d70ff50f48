"""One training loop for every job: retraining a student, micro-profiling, the teacher.

Deterministic for a given ``TrainSpec.seed``; optional online early stopping on a
held-out split (EdgeSync's training manager stops a job once it stops improving).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from .distill.losses import hinton_kd_loss
from .models import to_tensor

FIT_VERSION = 2
"""Bumped whenever :func:`fit` learns differently (v2: random shifts), so that
models cached from an older recipe are retrained, never silently reused."""

__all__ = ["FIT_VERSION", "TrainSpec", "FitResult", "FitPlugin", "FitHooks", "fit", "evaluate", "head_parameters", "Progress",
           "top_gradient_mask"]


@dataclass(frozen=True)
class TrainSpec:
    """How to train one job.

    Attributes:
        epochs: the most epochs to run.
        batch_size: minibatch size.
        lr: Adam learning rate.
        layers: ``"all"`` trains every layer, ``"head"`` only the classifier (Ekya's
            "last layer only" configuration).
        patience: stop after this many epochs without a better validation loss;
            0 runs all ``epochs``.
        val_fraction: share of samples held out for early stopping.
        seed: seeds the initialisation of randomness (shuffling, augmentation).
        kd_weight: with teacher logits given, the share ``alpha`` of the loss
            that is Hinton distillation: ``alpha * KD + (1 - alpha) * CE``.
        kd_temperature: the distillation temperature ``T``.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    layers: str = "all"
    patience: int = 0
    val_fraction: float = 0.25
    seed: int = 0
    kd_weight: float = 0.0
    kd_temperature: float = 4.0

    def __post_init__(self):
        if self.layers not in ("all", "head"):
            raise ValueError(f"TrainSpec.layers must be 'all' or 'head', got {self.layers!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("TrainSpec needs epochs >= 1, batch_size >= 1 and lr > 0")
        if not 0.0 <= self.kd_weight <= 1.0 or self.kd_temperature <= 0:
            raise ValueError("TrainSpec needs kd_weight in [0, 1] and kd_temperature > 0")


@dataclass
class FitResult:
    """What a finished job reports: the epochs it ran (its GPU cost), its
    per-epoch validation accuracy, the samples it trained on, and each fit
    plugin's state after the job (by plugin name)."""

    epochs_run: int
    samples: int
    val_accuracy: list[float] = field(default_factory=list)
    plugin_states: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_epochs(self) -> int:
        return self.epochs_run * self.samples


class FitHooks(Protocol):
    """A fit plugin's live part inside one :func:`fit`."""

    def parameters(self) -> list[nn.Parameter]:
        """Extra parameters the job's optimiser trains."""
        ...

    def before_epoch(self, model: nn.Module, x_all: torch.Tensor, batches: Iterator[torch.Tensor]) -> None:
        """At the start of each epoch; ``batches`` are index batches of ``x_all``
        (drawing them advances the job's random stream)."""
        ...

    def loss(self, out: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """An extra loss term after the forward pass of the batch ``b`` (logits ``out``)."""
        ...

    def close(self) -> Any:
        """The job is over: release hooks; return the state to keep."""
        ...


class FitPlugin(Protocol):
    """What a job carries for a plugin (picklable, so it travels to a Ray Train
    worker); :func:`fit` starts it on the model."""

    name: str

    def start(self, model: nn.Module, x_all: torch.Tensor, train_idx: np.ndarray) -> FitHooks:
        """Begin on ``model`` and the normalised frames ``x_all`` (N', 3, H, W)
        the job trains on (rows ``train_idx`` of the job's samples)."""
        ...


@dataclass
class Progress:
    """A :class:`FitPlugin` that only reports: at most every ``every`` seconds,
    ``log("<what>: epoch e/E, p % of it, t s")``. It adds no parameters and a
    zero loss, so the training is the same with it or without."""

    what: str
    epochs: int
    log: Callable[[str], None] = print
    every: float = 10.0
    name: str = "progress"

    def start(self, model: nn.Module, x_all: torch.Tensor, train_idx: np.ndarray) -> FitHooks:
        return _ProgressHooks(self, len(x_all))


class _ProgressHooks:
    def __init__(self, p: Progress, n: int):
        self.p, self.n = p, n
        self.epoch, self.seen = 0, 0
        self.started = self.shown = time.time()

    def parameters(self) -> list[nn.Parameter]:
        return []

    def before_epoch(self, model, x_all, batches) -> None:
        self.epoch, self.seen = self.epoch + 1, 0

    def loss(self, out: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.seen += len(b)
        if time.time() - self.shown >= self.p.every:
            self.shown = time.time()
            self.p.log(f"{self.p.what}: epoch {self.epoch}/{self.p.epochs}, {100 * self.seen // max(1, self.n)} % "
                       f"of it, {self.shown - self.started:.0f} s")
        return out.new_zeros(())

    def close(self) -> None:
        return None


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The final classifier's parameters (``classifier``/``fc``/``head``)."""
    for name in ("classifier", "fc", "head"):
        if hasattr(model, name):
            return list(getattr(model, name).parameters())
    raise ValueError(f"{type(model).__name__} has no classifier/fc/head module")


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on labelled frames."""
    model.eval()
    x, y = to_tensor(images, device, model), torch.as_tensor(labels, device=device)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    return float((logits.argmax(1) == y).float().mean().item()), loss


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, spec: TrainSpec,
        weights: np.ndarray | None = None, val: tuple[np.ndarray, np.ndarray] | None = None,
        grad_mask: dict[str, torch.Tensor] | None = None,
        teacher_logits: np.ndarray | None = None, plugins: list[FitPlugin] = (),
        device: torch.device | str = "cpu") -> FitResult:
    """Train ``model`` in place on uint8 frames and integer labels.

    ``weights`` scale each sample's loss (EdgeSync's timeliness weighting). With
    ``spec.patience`` > 0 and no explicit ``val``, a ``val_fraction`` split is held
    out and the best epoch's weights are kept. ``grad_mask`` (parameter name ->
    0/1 tensor) confines training to the selected coordinates (AMS).
    ``teacher_logits`` (N, K) add Hinton distillation at ``spec.kd_weight``:
    the teacher's full output says more per sample than its label.
    ``plugins`` add parameters, per-epoch phases and loss terms through their
    hooks (:class:`FitPlugin`; e.g. seed 2's generative feature distillation,
    :class:`~driftlab.platform.distill.frames.GenKDTargets`); their states come
    back in ``FitResult.plugin_states``.
    """
    n = len(labels)
    if n == 0:
        return FitResult(0, 0)
    rng = np.random.default_rng(spec.seed)
    torch.manual_seed(spec.seed)
    weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    train_idx = np.arange(n)
    if val is None and spec.patience > 0 and n >= 8:
        perm = rng.permutation(n)
        n_val = max(2, int(round(n * spec.val_fraction)))
        val = (images[perm[:n_val]], labels[perm[:n_val]])
        train_idx = perm[n_val:]

    model.to(device)
    params = head_parameters(model) if spec.layers == "head" else list(model.parameters())
    x_all = to_tensor(images[train_idx], device, model)
    y_all = torch.as_tensor(labels[train_idx], device=device)
    w_all = torch.as_tensor(weights[train_idx], device=device)
    w_all = w_all / w_all.mean()
    kd = spec.kd_weight if teacher_logits is not None else 0.0
    z_all = torch.as_tensor(np.asarray(teacher_logits, np.float32)[train_idx], device=device) if kd else None
    if len({p.name for p in plugins}) != len(plugins):
        raise ValueError(f"fit plugins need distinct names, got {[p.name for p in plugins]}")
    hooks: dict[str, FitHooks] = {}
    try:
        for p in plugins:
            hooks[p.name] = p.start(model, x_all, train_idx)
            params += hooks[p.name].parameters()
        epochs_run, history, best_state = _epochs(model, params, x_all, y_all, w_all, z_all, kd, val, spec, rng,
                                                  grad_mask, list(hooks.values()), device)
    finally:
        states = {name: h.close() for name, h in hooks.items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(epochs_run, len(train_idx), history, plugin_states=states)


def _epochs(model, params, x_all, y_all, w_all, z_all, kd, val, spec, rng, grad_mask, hooks, device):
    """The epochs of :func:`fit`: (epochs run, validation history, best state or None)."""
    opt = torch.optim.Adam(params, lr=spec.lr)
    best_loss, best_state, since_best = float("inf"), None, 0
    history: list[float] = []
    epochs_run = 0
    for epoch in range(spec.epochs):
        for h in hooks:
            h.before_epoch(model, x_all, _batches(len(x_all), spec.batch_size, rng))
        _train_mode(model, spec.layers)
        for b in _batches(len(x_all), spec.batch_size, rng):
            x = _augment(x_all[b], rng)
            out = model(x)
            terms = [h.loss(out, b) for h in hooks]
            extra = sum(terms[1:], terms[0]) if terms else 0.0
            loss = nn.functional.cross_entropy(out, y_all[b], reduction="none")
            if kd:
                loss = kd * hinton_kd_loss(out, z_all[b], spec.kd_temperature, reduction="none") \
                    + (1.0 - kd) * loss
            loss = (loss * w_all[b]).mean() + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_mask is not None:
                for name, p in model.named_parameters():
                    if p.grad is not None and name in grad_mask:
                        p.grad.mul_(grad_mask[name])
            opt.step()
        epochs_run = epoch + 1
        if val is not None:
            acc, vloss = evaluate(model, val[0], val[1], device)
            history.append(acc)
            if spec.patience > 0:
                if vloss < best_loss - 1e-4:
                    best_loss, since_best = vloss, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
                    if since_best >= spec.patience:
                        break
    return epochs_run, history, best_state


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Index batches of a random permutation of ``n``, none of one sample
    (BatchNorm cannot train on one)."""
    perm = torch.from_numpy(rng.permutation(n))
    for i in range(0, n, batch_size):
        if len(perm[i:i + batch_size]) >= 2:
            yield perm[i:i + batch_size]


def top_gradient_mask(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                      fraction: float, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """0/1 masks selecting the ``fraction`` of parameters with the largest
    gradient magnitude on the given samples (AMS's gradient-guided update).
    The forward pass runs in train mode, so BatchNorm statistics move one step
    toward these samples, as the job that follows would move them anyway."""
    model.to(device).train()
    model.zero_grad(set_to_none=True)
    x, y = to_tensor(images, device, model), torch.as_tensor(labels, device=device)
    nn.functional.cross_entropy(model(x), y).backward()
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    flat = torch.cat([p.grad.abs().flatten() for _, p in named])
    k = max(1, int(fraction * flat.numel()))
    threshold = flat.kthvalue(flat.numel() - k + 1).values
    masks = {n: (p.grad.abs() >= threshold).float() for n, p in named}
    model.zero_grad(set_to_none=True)
    return masks


def _train_mode(model: nn.Module, layers: str) -> None:
    """Train mode for what trains; a frozen backbone keeps its BatchNorm statistics."""
    if layers == "all":
        model.train()
        return
    model.eval()
    for name in ("classifier", "fc", "head"):
        if hasattr(model, name):
            getattr(model, name).train()


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift (per sample) of up to 1/8 of the frame."""
    n, _, h, w = x.shape
    flip = torch.from_numpy(rng.random(n) < 0.5).to(x.device)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    shifts = rng.integers(0, 2 * pad + 1, size=(n, 2))
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])
