"""Seed 2 in a camera's retraining: generative feature distillation on frames.

A camera frame is a one-step clip. The cameras' students and the server's
teacher are plain torchvision classifiers, so seed 2's parts sit on their late
feature map (the global pool's input, B x C x h x w) as a :class:`FrameHead`:
a 1x1 projection into a shared ``dim``-channel space, seed 2's attention with a
single step (one gate per channel) and a classifier on the foreground features.

- Teacher, once (cached beside it): its backbone frozen, its head and a
  :class:`FeatureCVAE` over the projected map learn seed 2's phase 1
  (:func:`train_teacher_head`). With each label the teacher then gives its
  attention on the frame.
- A retraining job with ``distill: genkd`` (the job plugin
  :class:`GenKDPlugin`; its fit part :class:`GenKDTargets` starts a
  :class:`GenKD` inside :func:`driftlab.platform.training.fit`), every epoch: (a) the student
  frozen, its CVAE learns the student's projected map plus generative
  distillation toward the teacher CVAE's reconstruction of that map; (b) the
  CVAE frozen, the student and its head learn the task plus the ramped
  generated-feature term and attention distillation toward the teacher's
  attention. The head and CVAE persist per camera from job to job (the server
  keeps them with its copy of the student), and the ramp runs over a camera's
  jobs, which are a couple of epochs each.

The deployed student is unchanged (its own classifier on pooled features):
seed 2's parts shape its features during training only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..plugins import JobPlugin
from .losses import (attention_distillation_loss, cvae_loss, generative_distillation_loss,
                     reconstruction_weight)
from .models import ActionOutput, FeatureCVAE, attend, temporal_attention
from .training import DistillConfig, phase_one, set_frozen

__all__ = ["GENKD_DIM", "FrameHead", "GenKDPlugin", "GenKDTargets", "GenKD", "late_map", "train_teacher_head"]

GENKD_DIM = 64
"""Channels of the shared space the teacher's and students' late maps are projected to."""


def _pool(model: nn.Module) -> nn.Module:
    pool = getattr(model, "avgpool", None)
    if pool is None:
        raise ValueError(f"{type(model).__name__} has no avgpool module to take its late feature map from")
    return pool


def late_map(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(late feature map, logits)`` of a torchvision classifier in one pass:
    the map is the input of its global pool (``avgpool``)."""
    pool = _pool(model)
    seen: list[torch.Tensor] = []
    hook = pool.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return seen[0], logits


class FrameHead(nn.Module):
    """Seed 2's head on an image classifier's late map: project to ``dim``
    channels at ``spatial`` size, attend (one step) and classify the foreground."""

    def __init__(self, in_channels: int, num_classes: int, spatial: tuple[int, int],
                 dim: int = GENKD_DIM):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                     nn.ReLU(inplace=True))
        self.attention = temporal_attention(dim)
        self.fc = nn.Linear(dim, num_classes)
        self.spatial = spatial

    def forward(self, late: torch.Tensor) -> ActionOutput:
        f = F.adaptive_avg_pool2d(self.project(late), self.spatial)
        return attend(f.unsqueeze(2), self.attention, self.fc)


@torch.no_grad()
def _late_maps(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([late_map(model, x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])


def train_teacher_head(teacher: nn.Module, x_all: torch.Tensor, labels: np.ndarray,
                       cfg: DistillConfig, log=print) -> tuple[FrameHead, FeatureCVAE]:
    """Seed 2's phase 1 on a frozen image teacher: its head and CVAE learn
    the teacher's late maps of normalised frames ``x_all`` (N, 3, H, W)."""
    maps = _late_maps(teacher, x_all)
    torch.manual_seed(cfg.seed)
    h, w = maps.shape[2:]
    head = FrameHead(maps.shape[1], int(labels.max()) + 1, (h, w)).to(maps.device)
    cvae = FeatureCVAE(GENKD_DIM, (h, w)).to(maps.device)
    phase_one(head, cvae, maps, torch.as_tensor(labels, device=maps.device), cfg, log, name="teacher head")
    return head, cvae


class GenKDPlugin(JobPlugin):
    """Seed 2's distillation in every retraining job (``distill: genkd``): the
    server keeps each camera's head and CVAE from job to job and charges a
    job ``costs.genkd_factor`` plain sample-epochs per sample-epoch."""

    name = "genkd"

    def __init__(self, teacher_cvae: dict):
        self.teacher_cvae = teacher_cvae
        self.parts: dict[int, dict] = {}   # camera -> its head and CVAE after its last job
        self.jobs: dict[int, int] = {}     # camera -> its genkd jobs so far

    def fit_plugin(self, camera: int, samples) -> GenKDTargets:
        attention = samples.columns.get("attention", np.empty((len(samples.labels), 0), np.float32))
        return GenKDTargets(attention, self.teacher_cvae, self.parts.get(camera), self.jobs.get(camera, 0))

    def after_job(self, camera: int, state: dict | None) -> None:
        if state is not None:
            self.parts[camera] = state
            self.jobs[camera] = self.jobs.get(camera, 0) + 1

    def cost_factor(self, costs) -> float:
        return costs.genkd_factor


@dataclass
class GenKDTargets:
    """What a genkd retraining job carries besides its frames (a
    :class:`~driftlab.platform.training.FitPlugin`): the teacher's attention
    on each frame (N, dim), the teacher CVAE's weights and the camera's own
    head and CVAE from its previous job (``None`` before its first).

    ``jobs`` counts the camera's earlier genkd jobs (the ramp's clock)."""

    attention: np.ndarray
    teacher_cvae: dict
    parts: dict | None = None
    jobs: int = 0
    name = "genkd"

    def start(self, model: nn.Module, x_all: torch.Tensor, train_idx: np.ndarray) -> "GenKD":
        return GenKD(model, x_all, replace(self, attention=np.asarray(self.attention)[train_idx]))


class GenKD:
    """Seed 2's student side for one job: the camera's head and CVAE, the
    frozen teacher CVAE, and the two phases' losses."""

    def __init__(self, model: nn.Module, images: torch.Tensor, targets: GenKDTargets,
                 cfg: DistillConfig = DistillConfig()):
        self.cfg = cfg
        c, _, _, h, w = targets.teacher_cvae["unfold.0.weight"].shape   # the CVAE's unfolding kernel
        self.teacher_cvae = FeatureCVAE(c, (h, w)).to(images.device)
        self.teacher_cvae.load_state_dict(targets.teacher_cvae)
        set_frozen(self.teacher_cvae, True)
        with torch.no_grad():
            model.eval()
            late, logits = late_map(model, images[:2])
        self.head = FrameHead(late.shape[1], logits.shape[1], (h, w), dim=c).to(images.device)
        self.cvae = FeatureCVAE(c, (h, w)).to(images.device)
        if targets.parts is not None:
            self.head.load_state_dict(targets.parts["head"])
            self.cvae.load_state_dict(targets.parts["cvae"])
        self.cvae_opt = torch.optim.Adam(self.cvae.parameters(), lr=cfg.cvae_lr, betas=(0.8, 0.999))
        self.attention = torch.as_tensor(np.asarray(targets.attention, np.float32), device=images.device)
        self.weight = reconstruction_weight(targets.jobs + 1, cfg.ramp_epochs, cfg.recon_peak)
        # The student's late map of each forward pass, for the loss terms.
        self._late: torch.Tensor | None = None
        self._hook = _pool(model).register_forward_hook(lambda _m, args, _out: setattr(self, "_late", args[0]))

    def before_epoch(self, model: nn.Module, images: torch.Tensor, batches) -> None:
        """Phase a: the student and head frozen, the CVAE learns the student's
        projected map, pulled toward the teacher CVAE's reconstruction of it."""
        was_training = model.training
        model.eval()
        set_frozen(self.head, True)
        set_frozen(self.cvae, False)
        for b in batches:
            with torch.no_grad():
                out = self.head(late_map(model, images[b])[0])
                _, _, target = self.teacher_cvae(out.features, out.attention)
            mean, logvar, recon = self.cvae(out.features, out.attention)
            loss = (cvae_loss(recon, out.features, mean, logvar, out.attention, self.cfg.kl_weight)
                    + self.cfg.gen_weight * generative_distillation_loss(recon, target))
            self.cvae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.cvae_opt.step()
        set_frozen(self.cvae, True)
        set_frozen(self.head, False)
        model.train(was_training)

    def loss(self, out: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Phase b, after the student's forward pass over the frames ``b``:
        seed 2's extra loss (ramped generated-feature term + attention distillation)."""
        head = self.head(self._late)
        return (self.weight * F.mse_loss(self.cvae.generate(head.attention), head.features)
                + self.cfg.beta * attention_distillation_loss(head.attention[..., 0], self.attention[b]))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def close(self) -> dict:
        """The camera's head and CVAE after this job, for its next one."""
        self._hook.remove()

        def cpu(m: nn.Module) -> dict:
            return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
        return {"head": cpu(self.head), "cvae": cpu(self.cvae)}
