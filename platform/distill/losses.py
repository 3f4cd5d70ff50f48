"""The distillation losses: seed 2's and the three baselines'.

Each is a small function whose docstring gives its formula; means are over
every element unless said otherwise. Shapes: features ``F`` (B, C, T, h, w),
attention ``a`` (B, C, T), logits (B, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cvae_loss", "generative_distillation_loss", "attention_distillation_loss",
           "reconstruction_weight", "hinton_kd_loss", "hint_loss", "attention_transfer_loss"]


def cvae_loss(recon: torch.Tensor, features: torch.Tensor, mean: torch.Tensor,
              logvar: torch.Tensor, attention: torch.Tensor, kl_weight: float = 0.1) -> torch.Tensor:
    """Seed 2, phase 1: the CVAE's evidence bound with the attention as prior mean,

        mean((recon - F)^2) + kl_weight * mean(KL(N(mu, sigma^2) || N(a, 1)))

    where KL = 0.5 * (sigma^2 + (mu - a)^2 - 1 - log sigma^2) per latent unit.
    """
    kl = 0.5 * (logvar.exp() + (mean - attention) ** 2 - 1.0 - logvar)
    return F.mse_loss(recon, features) + kl_weight * kl.mean()


def generative_distillation_loss(student_recon: torch.Tensor, teacher_recon: torch.Tensor) -> torch.Tensor:
    """Seed 2, phase 2a: the student's CVAE reconstruction matches the teacher
    CVAE's reconstruction of the same features: mean((R_s - R_t)^2)."""
    return F.mse_loss(student_recon, teacher_recon.detach())


def attention_distillation_loss(student_attention: torch.Tensor,
                                teacher_attention: torch.Tensor) -> torch.Tensor:
    """Seed 2, phase 2b: the student's temporal attention matches the teacher's:
    mean((a_s - a_t)^2)."""
    return F.mse_loss(student_attention, teacher_attention.detach())


def reconstruction_weight(epoch: int, ramp_epochs: int, peak: float = 0.5) -> float:
    """Weight of the generated-feature term in epoch ``epoch`` (1-based):
    ``min(epoch, ramp_epochs) / ramp_epochs * peak`` (the authors ramp over 20
    epochs to 0.5)."""
    return min(epoch, ramp_epochs) / ramp_epochs * peak


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float = 4.0, reduction: str = "mean") -> torch.Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``
    per sample, averaged over the batch (``reduction="none"``: one per sample)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits.detach() / t, dim=1),
                  reduction="none").sum(1) * t * t
    return kl if reduction == "none" else kl.mean()


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015): the student's (regressed) feature map
    matches the teacher's hint layer: mean((F_s - F_t)^2)."""
    return F.mse_loss(student_features, teacher_features.detach())


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): with the activation map
    ``Q = vec(mean_c F^2)`` over (T, h, w), ``mean((Q_s/|Q_s| - Q_t/|Q_t|)^2)``."""
    def _map(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)

    return (_map(student_features) - _map(teacher_features.detach())).pow(2).mean()
