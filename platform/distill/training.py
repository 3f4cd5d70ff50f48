"""Training the action teacher and distilling students (seed 2 and baselines).

Seed 2 alternates two phases every epoch, each with the other part frozen:

- teacher: (a) backbone frozen, the CVAE learns to represent its late features
  (:func:`~.losses.cvae_loss`); (b) CVAE frozen, the backbone, attention and
  head learn the task on foreground features plus a ramped term pulling the
  features toward what the CVAE generates from the attention alone;
- student (teacher and teacher CVAE frozen throughout): (a) student frozen,
  its CVAE learns its features plus *generative distillation* toward the
  teacher CVAE's reconstruction; (b) student CVAE frozen, the student learns
  the task, the ramped generated-feature term, and *attention distillation*.

The teacher is frozen and deterministic, so its outputs on the training clips
(:class:`TeacherTargets`) are computed once, under ``no_grad``, and shared by
every student. A :class:`DistillJob` is self-contained (arrays and state
dicts), so a Ray Train worker runs it as it runs a camera's retraining job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import cache_path
from .clips import Clips
from .losses import (attention_distillation_loss, attention_transfer_loss, cvae_loss,
                     generative_distillation_loss, hint_loss, hinton_kd_loss,
                     reconstruction_weight)
from .models import ActionNet, FeatureCVAE, action_student, action_teacher, clips_to_tensor

__all__ = ["METHODS", "ABLATIONS", "SEARCH_SPACE", "base_method", "DistillConfig", "TeacherTargets",
           "DistillResult", "DistillJob", "train_teacher",
           "phase_one", "cached_teacher", "teacher_targets", "train_student", "accuracy", "set_frozen"]

METHODS = ("none", "hinton", "fitnet", "at", "genkd")
"""Student training methods: no KD, Hinton logit KD, FitNets hint, attention
transfer, and seed 2's generative feature distillation."""

ABLATIONS = {
    "genkd-gen": {"gen_weight": 0.0, "recon_peak": 0.0},   # seed 2 without its generative terms
    "genkd-att": {"beta": 0.0},                            # seed 2 without attention distillation
}
"""Seed 2 with one of its parts dropped (``-`` as in a strategy's name): the
:class:`DistillConfig` weights each sets to zero."""

# method -> {DistillConfig field: (kind, *arguments)}: "loguniform"/"uniform" (low, high), "choice" (options),
# the format of driftlab.platform.tuning.SEARCH_SPACE. No KD has no distillation weight, so nothing to search.
SEARCH_SPACE: dict[str, dict[str, tuple]] = {
    "none": {},
    "hinton": {"temperature": ("choice", [1.0, 2.0, 4.0, 8.0]), "hinton_alpha": ("uniform", 0.1, 0.95)},
    "fitnet": {"hint_weight": ("loguniform", 0.03, 30.0)},
    "at": {"at_weight": ("loguniform", 1.0, 1000.0)},
    "genkd": {"beta": ("loguniform", 0.01, 10.0), "gen_weight": ("loguniform", 1e-3, 1.0),
              "recon_peak": ("uniform", 0.0, 1.0), "ramp_epochs": ("choice", [1, 3, 6, 12])},
}
"""The distillation hyperparameters each method's validation search draws
(``experiments/action_kd.py --search``); the ablations use what ``genkd`` chose."""


def base_method(method: str) -> str:
    """The method an ablation is a variant of (``genkd-att`` -> ``genkd``); a
    method of :data:`METHODS` is its own."""
    return "genkd" if method in ABLATIONS else method


@dataclass(frozen=True)
class DistillConfig:
    """Hyperparameters; loss weights follow the authors' code where it has one.

    Attributes:
        epochs: training epochs (for seed 2, each has both phases).
        batch_size: clips per step.
        lr: Adam learning rate of the networks (cosine-decayed to 0).
        cvae_lr: Adam learning rate of the CVAEs (betas 0.8, 0.999 as the authors').
        kl_weight: weight of the KL term of the CVAE loss (authors: 0.1).
        gen_weight: generative distillation weight in phase 2a (authors: 0.01).
        beta: attention distillation weight in phase 2b (authors: 0.1).
        recon_peak: final weight of the generated-feature term (authors: 0.5).
        ramp_epochs: epochs over which that weight ramps up (authors: 20 of
            their longer runs; scaled to ours).
        temperature: Hinton KD temperature.
        hinton_alpha: Hinton KD's share of the loss (the rest is cross-entropy).
        hint_weight: FitNets hint weight.
        at_weight: attention transfer weight. Its authors' 1e3 multiplies a
            mean over ~1024 map positions; ours has T*h*w = 32, so the same
            pull on the map is 1e3 * 32 / 1024 (at 1e3 the student collapses
            to chance).
        seed: initialisation and batch order.
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 2e-3
    cvae_lr: float = 1e-3
    kl_weight: float = 0.1
    gen_weight: float = 0.01
    beta: float = 0.1
    recon_peak: float = 0.5
    ramp_epochs: int = 5
    temperature: float = 4.0
    hinton_alpha: float = 0.5
    hint_weight: float = 1.0
    at_weight: float = 31.25
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2 or self.ramp_epochs < 1:
            raise ValueError("epochs and ramp_epochs must be >= 1 and batch_size >= 2")


@dataclass
class TeacherTargets:
    """The frozen teacher's outputs on the training clips, row for row."""

    features: np.ndarray
    attention: np.ndarray
    logits: np.ndarray


@dataclass
class DistillResult:
    """What a training run did: its mean loss per epoch (phase b for seed 2)."""

    epochs: int
    losses: list[float] = field(default_factory=list)


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, eval-mode normalisation, so no buffer moves) or thaw."""
    module.requires_grad_(not frozen)
    module.train(not frozen)


def _batches(n: int, cfg: DistillConfig, rng: np.random.Generator):
    perm = rng.permutation(n)
    for i in range(0, n, cfg.batch_size):
        b = perm[i:i + cfg.batch_size]
        if len(b) >= 2:  # BatchNorm cannot train on one sample
            yield torch.from_numpy(b)


def _net_optimizer(net: nn.Module, cfg: DistillConfig):
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)


def _cvae_optimizer(cvae: nn.Module, cfg: DistillConfig):
    return torch.optim.Adam(cvae.parameters(), lr=cfg.cvae_lr, betas=(0.8, 0.999))


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _cvae_phase(net: ActionNet, cvae: FeatureCVAE, opt, x_all, cfg, rng,
                teacher_cvae: FeatureCVAE | None = None) -> None:
    """Phase a: the network frozen, its CVAE learns its features (and, for a
    student, generative distillation toward the teacher's CVAE)."""
    set_frozen(net, True)
    set_frozen(cvae, False)
    for b in _batches(len(x_all), cfg, rng):
        with torch.no_grad():
            out = net(x_all[b])
        mean, logvar, recon = cvae(out.features, out.attention)
        loss = cvae_loss(recon, out.features, mean, logvar, out.attention, cfg.kl_weight)
        if teacher_cvae is not None:
            with torch.no_grad():
                _, _, target = teacher_cvae(out.features, out.attention)
            loss = loss + cfg.gen_weight * generative_distillation_loss(recon, target)
        _step(opt, loss)


def _task_phase(net: ActionNet, opt, x_all, cfg, rng, loss_fn, frozen: nn.Module | None = None) -> float:
    """Phase b (and the whole epoch of a one-phase method): ``frozen`` (a CVAE)
    fixed, the network learns ``loss_fn(output, batch_index)``; its mean loss."""
    if frozen is not None:
        set_frozen(frozen, True)
    set_frozen(net, False)
    losses = [_step(opt, loss_fn(net(x_all[b]), b)) for b in _batches(len(x_all), cfg, rng)]
    return float(np.mean(losses))


def train_teacher(clips: Clips, num_classes: int, cfg: DistillConfig,
                  device: torch.device | str = "cpu", log=print) -> tuple[ActionNet, FeatureCVAE]:
    """Seed 2, phase 1 on the teacher: alternate CVAE and backbone each epoch."""
    torch.manual_seed(cfg.seed)
    net = action_teacher(num_classes).to(device)
    x_all = clips_to_tensor(clips.videos, device)
    cvae = _cvae_for(net, x_all).to(device)
    phase_one(net, cvae, x_all, torch.as_tensor(clips.labels, device=device), cfg, log)
    return net, cvae


def phase_one(net: nn.Module, cvae: FeatureCVAE, x_all: torch.Tensor, y_all: torch.Tensor,
              cfg: DistillConfig, log=print, name: str = "teacher") -> None:
    """Seed 2's phase 1 on a teacher ``net`` (inputs -> :class:`ActionOutput`):
    each epoch the CVAE learns the features, then the network learns the task
    plus the ramped generated-feature term; both are left frozen."""
    rng = np.random.default_rng(cfg.seed)
    opt, sched = _net_optimizer(net, cfg)
    cvae_opt = _cvae_optimizer(cvae, cfg)
    for epoch in range(1, cfg.epochs + 1):
        _cvae_phase(net, cvae, cvae_opt, x_all, cfg, rng)
        w = reconstruction_weight(epoch, cfg.ramp_epochs, cfg.recon_peak)

        def loss_fn(out, b):
            return (F.cross_entropy(out.logits, y_all[b])
                    + w * F.mse_loss(cvae.generate(out.attention), out.features))

        loss = _task_phase(net, opt, x_all, cfg, rng, loss_fn, frozen=cvae)
        sched.step()
        log(f"{name} epoch {epoch}/{cfg.epochs}: loss {loss:.3f}")
    set_frozen(net, True)
    set_frozen(cvae, True)


_TEACHER_FIELDS = ("epochs", "batch_size", "lr", "cvae_lr", "kl_weight", "recon_peak", "ramp_epochs",
                   "seed")
"""The :class:`DistillConfig` fields :func:`train_teacher` reads."""


def cached_teacher(clips: Clips, num_classes: int, cfg: DistillConfig,
                   device: torch.device | str = "cpu", log=print) -> tuple[ActionNet, FeatureCVAE]:
    """:func:`train_teacher`, run once per recipe and cached on disk (the
    cache key covers the clips' shape, count and labels and the fields of
    ``cfg`` the teacher's training reads)."""
    recipe = {k: getattr(cfg, k) for k in _TEACHER_FIELDS}   # student-only weights left out
    path = cache_path("action-teacher", num_classes, clips.videos.shape, clips.labels.tolist(), recipe,
                      int(clips.videos[:, :, ::4, ::4].sum()))
    if os.path.exists(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        teacher = action_teacher(num_classes)
        teacher.load_state_dict(saved["teacher"])
        c, h, w = saved["feature_shape"]
        cvae = FeatureCVAE(c, (h, w))
        cvae.load_state_dict(saved["cvae"])
        set_frozen(teacher, True)
        set_frozen(cvae, True)
        return teacher.to(device), cvae.to(device)
    log(f"training the action teacher on {len(clips)} clips (cached in {path})")
    teacher, cvae = train_teacher(clips, num_classes, cfg, device, log=log)
    tmp = path + ".tmp"
    torch.save({"teacher": teacher.state_dict(), "cvae": cvae.state_dict(),
                "feature_shape": (cvae.channels, *cvae.spatial)}, tmp)
    os.replace(tmp, path)
    return teacher, cvae


def _cvae_for(net: ActionNet, x_all: torch.Tensor) -> FeatureCVAE:
    with torch.no_grad():
        net.eval()
        shape = net.features(x_all[:2]).shape
    return FeatureCVAE(shape[1], (shape[3], shape[4]))


@torch.no_grad()
def teacher_targets(teacher: ActionNet, videos: np.ndarray, device: torch.device | str = "cpu",
                    batch_size: int = 64) -> TeacherTargets:
    """The frozen teacher's features, attention and logits on ``videos``."""
    teacher.eval()
    parts = []
    for i in range(0, len(videos), batch_size):
        out = teacher(clips_to_tensor(videos[i:i + batch_size], device))
        parts.append([t.cpu().numpy() for t in (out.features, out.attention, out.logits)])
    return TeacherTargets(*(np.concatenate(p) for p in zip(*parts)))


def train_student(method: str, clips: Clips, num_classes: int, cfg: DistillConfig,
                  targets: TeacherTargets | None = None, teacher_cvae: FeatureCVAE | None = None,
                  device: torch.device | str = "cpu", log=None) -> tuple[ActionNet, DistillResult]:
    """Train a student from scratch with ``method`` (one of :data:`METHODS`
    or :data:`ABLATIONS`); ``log`` (if given) gets a line per epoch."""
    requested = method
    if method in ABLATIONS:
        method, cfg = base_method(method), replace(cfg, **ABLATIONS[method])
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; choose one of: "
                         f"{', '.join((*METHODS, *ABLATIONS))}")
    if method != "none" and targets is None:
        raise ValueError(f"method {requested!r} needs the teacher's targets")
    if method == "genkd" and teacher_cvae is None:
        raise ValueError(f"method {requested!r} needs the teacher's CVAE")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = action_student(num_classes).to(device)
    x_all = clips_to_tensor(clips.videos, device)
    y_all = torch.as_tensor(np.require(clips.labels, requirements="W"), device=device)   # Ray's are read-only
    t = None if targets is None else {k: torch.as_tensor(np.require(v, requirements="W"), device=device)
                                      for k, v in vars(targets).items()}
    cvae = cvae_opt = None
    if method == "genkd" and cfg.recon_peak > 0:   # else the student's CVAE would shape nothing
        cvae = _cvae_for(net, x_all).to(device)
        cvae_opt = _cvae_optimizer(cvae, cfg)
        teacher_cvae = teacher_cvae.to(device)
        set_frozen(teacher_cvae, True)
    opt, sched = _net_optimizer(net, cfg)
    result = DistillResult(cfg.epochs)
    for epoch in range(1, cfg.epochs + 1):
        if cvae is not None:
            _cvae_phase(net, cvae, cvae_opt, x_all, cfg, rng, teacher_cvae)
        w = reconstruction_weight(epoch, cfg.ramp_epochs, cfg.recon_peak)

        def loss_fn(out, b):
            ce = F.cross_entropy(out.logits, y_all[b])
            if method == "none":
                return ce
            if method == "hinton":
                return (1 - cfg.hinton_alpha) * ce + cfg.hinton_alpha * hinton_kd_loss(
                    out.logits, t["logits"][b], cfg.temperature)
            if method == "fitnet":
                return ce + cfg.hint_weight * hint_loss(out.features, t["features"][b])
            if method == "at":
                return ce + cfg.at_weight * attention_transfer_loss(out.features, t["features"][b])
            generated = 0.0 if cvae is None else w * F.mse_loss(cvae.generate(out.attention), out.features)
            return ce + generated + cfg.beta * attention_distillation_loss(out.attention, t["attention"][b])

        result.losses.append(_task_phase(net, opt, x_all, cfg, rng, loss_fn, frozen=cvae))
        sched.step()
        if log is not None:
            log(f"{requested} seed {cfg.seed} epoch {epoch}/{cfg.epochs}: loss {result.losses[-1]:.3f}")
    set_frozen(net, True)
    return net, result


@torch.no_grad()
def accuracy(model: ActionNet, clips: Clips, device: torch.device | str = "cpu",
             batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model`` on ``clips``."""
    model.eval()
    correct = 0
    for i in range(0, len(clips), batch_size):
        logits = model(clips_to_tensor(clips.videos[i:i + batch_size], device)).logits
        correct += int((logits.argmax(1).cpu().numpy() == clips.labels[i:i + batch_size]).sum())
    return correct / max(len(clips), 1)


@dataclass
class DistillJob:
    """One student's distillation, self-contained (arrays and state dicts) so
    a Ray Train worker can run it like a camera's retraining job.

    Attributes:
        method: one of :data:`METHODS` or :data:`ABLATIONS`.
        clips: the training clips.
        num_classes: motion classes.
        cfg: hyperparameters (its seed included).
        targets: the teacher's outputs on ``clips`` (not needed for "none").
        teacher_cvae: the teacher CVAE's state dict (only for "genkd" and its ablations).
    """

    method: str
    clips: Clips
    num_classes: int
    cfg: DistillConfig
    targets: TeacherTargets | None = None
    teacher_cvae: dict | None = None

    def run(self, device: torch.device | str = "cpu", log=None) -> tuple[dict, DistillResult]:
        """Train the student (``log``: a line per epoch); its weights (on CPU)
        and what the training did."""
        cvae = None
        if self.teacher_cvae is not None:
            _, c, _, h, w = self.targets.features.shape
            cvae = FeatureCVAE(c, (h, w))
            cvae.load_state_dict(self.teacher_cvae)
        net, result = train_student(self.method, self.clips, self.num_classes, self.cfg,
                                    self.targets, cvae, device, log)
        return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, result
