"""Action-recognition teacher and student, and the generative feature model.

Both networks are torchvision video ResNets (``torchvision.models.video.resnet``
blocks) sized for 8-frame 32 px clips on a CPU:

- teacher: the r3d_18 layout (2 blocks per stage, every conv 3-D), width 1/4;
- student: the seed's "top-heavy" student (early stages 2-D, late stages 3-D),
  one block per stage at width 1/8, then a 1x1x1 conv to the teacher's channel
  count so the two late feature maps live in the same space (FitNets'
  regressor, kept as part of the student).

Neither downsamples time, so the late feature map ``F`` (B, C, T, h, w) keeps a
step per frame for the temporal attention. Seed 2's head on top of ``F``: a
sigmoid attention ``a`` (B, C, T), one gate per channel and step; features gated
by it (foreground) are pooled and classified. :class:`FeatureCVAE` is the
generative model over ``F`` conditioned on ``a`` (seed 2, phase 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Conv3DNoTemporal

__all__ = ["ActionNet", "ActionOutput", "FeatureCVAE", "action_teacher", "action_student",
           "foreground", "temporal_attention", "attend", "clips_to_tensor", "count_macs", "count_params"]


class _Conv3DKeepTime(nn.Conv3d):
    """A 3x3x3 convolution that downsamples space only (time keeps its length)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None,
                 stride: int = 1, padding: int = 1):
        super().__init__(in_planes, out_planes, kernel_size=3, stride=(1, stride, stride),
                         padding=padding, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return 1, stride, stride


@dataclass
class ActionOutput:
    """What a forward pass gives: late features ``F`` (B, C, T, h, w), attention
    ``a`` (B, C, T) in (0, 1), and class logits (B, K) of the gated features."""

    features: torch.Tensor
    attention: torch.Tensor
    logits: torch.Tensor


def foreground(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Seed 2's attention-gated (foreground) features, renormalised per sample:
    ``F * a * sum(F) / sum(F * a)`` so gating changes where the mass is, not
    how much (the authors normalise over the whole batch; per sample keeps one
    clip from scaling another)."""
    gated = features * attention[..., None, None]
    dims = tuple(range(1, features.dim()))
    scale = features.sum(dims, keepdim=True) / gated.sum(dims, keepdim=True).clamp_min(1e-6)
    return gated * scale


def temporal_attention(channels: int) -> nn.Module:
    """Seed 2's attention: from each step's spatially pooled features (B, C, T),
    a gate in (0, 1) per channel and step (a 3-step temporal conv, then 1x1)."""
    return nn.Sequential(
        nn.Conv1d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels),
        nn.ReLU(inplace=True), nn.Conv1d(channels, channels, 1), nn.Sigmoid())


def attend(features: torch.Tensor, attention: nn.Module, fc: nn.Linear) -> ActionOutput:
    """Seed 2's head on late features ``F`` (B, C, T, h, w): the attention, then
    the class logits of the pooled foreground features."""
    a = attention(features.mean((3, 4)))
    return ActionOutput(features, a, fc(foreground(features, a).mean((2, 3, 4))))


class ActionNet(nn.Module):
    """Video ResNet backbone -> late features -> temporal attention -> classifier.

    Args:
        widths: channels of the four stages.
        blocks: BasicBlocks per stage.
        conv_makers: the conv builder of each stage (2-D or 3-D).
        feature_dim: channels of the late feature map (a 1x1x1 conv maps the
            last stage to it when they differ).
        num_classes: motion classes.
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], conv_makers: tuple,
                 feature_dim: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2),
                      bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        stages, inplanes = [], widths[0]
        for i, (width, n, maker) in enumerate(zip(widths, blocks, conv_makers)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                downsample = None
                if j == 0 and (stride != 1 or inplanes != width):
                    downsample = nn.Sequential(
                        nn.Conv3d(inplanes, width, 1, stride=maker.get_downsample_stride(stride),
                                  bias=False),
                        nn.BatchNorm3d(width))
                layers.append(BasicBlock(inplanes, width, maker, stride if j == 0 else 1, downsample))
                inplanes = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.adapter = nn.Identity() if inplanes == feature_dim else nn.Sequential(
            nn.Conv3d(inplanes, feature_dim, 1, bias=False), nn.BatchNorm3d(feature_dim),
            nn.ReLU(inplace=True))
        self.attention = temporal_attention(feature_dim)
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The late feature map ``F`` of clips ``x`` (B, 3, T, H, W)."""
        return self.adapter(self.stages(self.stem(x)))

    def head(self, features: torch.Tensor) -> ActionOutput:
        return attend(features, self.attention, self.fc)

    def forward(self, x: torch.Tensor) -> ActionOutput:
        return self.head(self.features(x))


def action_teacher(num_classes: int, feature_dim: int = 128) -> ActionNet:
    """r3d_18's layout (all-3-D, [2, 2, 2, 2] blocks) at width 1/4."""
    return ActionNet((16, 32, 64, feature_dim), (2, 2, 2, 2), (_Conv3DKeepTime,) * 4,
                     feature_dim, num_classes)


def action_student(num_classes: int, feature_dim: int = 128) -> ActionNet:
    """Top-heavy student: 2-D early stages, 3-D late ones, one block each, width 1/8."""
    return ActionNet((8, 16, 32, 64), (1, 1, 1, 1),
                     (Conv3DNoTemporal, Conv3DNoTemporal, _Conv3DKeepTime, _Conv3DKeepTime),
                     feature_dim, num_classes)


class FeatureCVAE(nn.Module):
    """Seed 2's generative model of the late features: a conditional VAE over
    ``F`` (B, C, T, h, w) conditioned on the attention ``a`` (B, C, T).

    The encoder folds each step's h x w map into a C-vector (a conv with the
    map's size as kernel), appends ``a`` and gives a Gaussian posterior per
    step (latent size C). The prior is N(a, I), so generating from attention
    alone is ``decode(a + noise, a)``; the decoder unfolds back to h x w.
    """

    def __init__(self, channels: int, spatial: tuple[int, int]):
        super().__init__()
        c, (h, w) = channels, spatial
        self.fold = nn.Sequential(nn.Conv3d(c, c, (1, h, w)), nn.GroupNorm(8, c), nn.ReLU(inplace=True))
        self.encoder = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU(),
                                     nn.Linear(c, 2 * c))
        self.decoder = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU(),
                                     nn.Linear(c, c))
        self.unfold = nn.Sequential(nn.ConvTranspose3d(c, c, (1, h, w)), nn.GroupNorm(8, c),
                                    nn.ReLU(inplace=True))
        self.channels, self.spatial = c, (h, w)

    def decode(self, z: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Features from latents ``z`` (B, T, C) and attention (B, C, T)."""
        x = self.decoder(torch.cat([z, attention.transpose(1, 2)], dim=-1))
        return self.unfold(x.transpose(1, 2)[..., None, None])

    def forward(self, features: torch.Tensor, attention: torch.Tensor):
        """``(mean, logvar, reconstruction)`` of ``features`` given ``attention``."""
        x = self.fold(features)[..., 0, 0].transpose(1, 2)            # (B, T, C)
        stats = self.encoder(torch.cat([x, attention.transpose(1, 2)], dim=-1))
        mean, logvar = stats.chunk(2, dim=-1)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return mean.transpose(1, 2), logvar.transpose(1, 2), self.decode(z, attention)

    def generate(self, attention: torch.Tensor) -> torch.Tensor:
        """Features drawn from the prior given attention alone: decode(a + noise, a)."""
        z = attention.transpose(1, 2)
        return self.decode(z + torch.randn_like(z), attention)


def clips_to_tensor(videos: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 clips (N, T, H, W, 3) -> normalised float (N, 3, T, H, W)."""
    x = torch.from_numpy(np.require(videos, requirements="CW")).to(device)
    return (x.permute(0, 4, 1, 2, 3).float() / 255.0 - 0.5) / 0.25


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: ActionNet, frames: int, size: int) -> int:
    """Multiply-accumulates of one clip's forward pass (convolutions and linear
    layers, which is where all but a sliver of the cost is)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        else:
            k = int(np.prod(module.kernel_size))
            total += out.numel() * module.in_channels // module.groups * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, frames, size, size, device=next(model.parameters()).device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
