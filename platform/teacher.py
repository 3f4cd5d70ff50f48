"""What the teacher says of the frames a camera uploads.

The same function labels inline (:class:`~driftlab.platform.sim.InlineCameras`)
and inside the Ray Serve deployment (:mod:`driftlab.deployments.teacher`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .distill.frames import FrameHead, late_map
from .models import logits, to_tensor

__all__ = ["teach"]


@torch.no_grad()
def teach(teacher: nn.Module, images: np.ndarray, head: FrameHead | None = None,
          batch_size: int = 256, device: torch.device | str | None = None) -> dict[str, np.ndarray]:
    """The teacher's answer on uploaded uint8 frames (N, H, W, 3): its
    ``logits`` (N, K) and, with a seed 2 ``head``, its ``attention`` (N, dim)
    for genkd jobs."""
    if head is None:
        return {"logits": logits(teacher, images, batch_size, device)}
    device = device or next(teacher.parameters()).device
    teacher.eval()
    head.eval()
    parts = []
    for i in range(0, len(images), batch_size):
        late, z = late_map(teacher, to_tensor(images[i:i + batch_size], device, teacher))
        parts.append((z.float().cpu().numpy(), head(late).attention[..., 0].float().cpu().numpy()))
    if not parts:
        return {"logits": logits(teacher, images),
                "attention": np.empty((0, head.fc.in_features), np.float32)}
    z, a = (np.concatenate(p) for p in zip(*parts))
    return {"logits": z, "attention": a}
