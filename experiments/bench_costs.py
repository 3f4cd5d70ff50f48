"""Benchmark: the per-camera compute costs a fleet is made of, on this machine.

Times, on the default device (a GPU when there is one) and the default world
(64 px frames, 2 fps, 10 s ticks):

- a camera's tick (render, student inference, BatchNorm refit) for a group
  of cameras, one by one and, where the group can, as one vectorised call
  (:class:`~driftlab.platform.camera.CameraGroup`), in seconds of compute per
  camera per stream second;
- the teacher labelling an upload, per frame;
- retraining the student, per sample-epoch.

These are the figures ``docs/scaling.md`` sizes a cluster from. No Ray: the
costs are the library's own.

    python experiments/bench_costs.py [--cameras 32] [--ticks 12]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from driftlab.platform.camera import CameraGroup, build_camera
from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student, build_teacher, default_device
from driftlab.platform.runner import set_determinism
from driftlab.platform.strategies import parse_strategy
from driftlab.platform.teacher import teach
from driftlab.platform.training import TrainSpec, fit
from driftlab.platform.world import CameraStream, get_scenario


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def camera_cost(cfg: SimConfig, n: int, ticks: int, vectorize: bool, device) -> float:
    """Compute seconds per camera per stream second of ``n`` edgesync cameras in one group."""
    scenario, strategy = get_scenario(cfg.scenario), parse_strategy("edgesync")
    cams = [build_camera(strategy, cfg, i, CameraStream(cfg.world, scenario, i, n, cfg.seed, cfg.duration),
                         build_student(cfg.student, cfg.world.num_classes, seed=i).to(device).eval(), teach=None)
            for i in range(n)]
    group = CameraGroup(cams, vectorize=vectorize)
    group.run(cfg.tick)  # warm-up
    _sync(device)
    t = time.perf_counter()
    for k in range(1, ticks + 1):
        group.run((k + 1) * cfg.tick)
    _sync(device)
    return (time.perf_counter() - t) / (n * ticks * cfg.tick)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=32, help="cameras in the group")
    p.add_argument("--ticks", type=int, default=12)
    args = p.parse_args()
    set_determinism()
    device = default_device()
    cfg = SimConfig(duration=(args.ticks + 2) * 10.0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; {cfg.student.arch} student, {cfg.teacher.arch} teacher, {cfg.world.size} px, {cfg.world.fps:g} fps")
    loop = camera_cost(cfg, args.cameras, args.ticks, False, device)
    print(f"camera tick, one by one:  {loop * 1e3:8.2f} ms compute per camera per stream second")
    stacked = camera_cost(cfg, args.cameras, args.ticks, True, device)
    print(f"camera tick, vectorised:  {stacked * 1e3:8.2f} ms  ({loop / stacked:.2f}x, {args.cameras} cameras)")

    images = CameraStream(cfg.world, get_scenario(cfg.scenario), 0, 1, 0, 600).frames(0, 256).images
    teacher = build_teacher(cfg.teacher, cfg.world.num_classes).to(device).eval()
    teach(teacher, images[:8], device=device)
    _sync(device)
    t = time.perf_counter()
    for i in range(0, 256, 8):  # uploads of 8 frames, each its own forward pass
        teach(teacher, images[i:i + 8], device=device)
    _sync(device)
    print(f"teacher labelling:        {(time.perf_counter() - t) / 256 * 1e3:8.2f} ms per frame (uploads of 8)")

    labels = np.arange(256) % cfg.world.num_classes
    student = build_student(cfg.student, cfg.world.num_classes).to(device)
    fit(student, images[:64], labels[:64], TrainSpec(epochs=1), device=device)
    _sync(device)
    t = time.perf_counter()
    fit(student, images, labels, TrainSpec(epochs=2), device=device)
    _sync(device)
    print(f"student retraining:       {(time.perf_counter() - t) / 512 * 1e3:8.2f} ms per sample-epoch (batch 32)")


if __name__ == "__main__":
    main()
