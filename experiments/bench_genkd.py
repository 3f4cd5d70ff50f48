"""What a genkd retraining job costs next to a plain one (``CostModel.genkd_factor``).

Times :func:`driftlab.platform.training.fit` on a job of the default preset's
size (the student at camera resolution, ``--samples`` frames, 2 epochs) with
labels only, with Hinton distillation, and with seed 2's generative feature
distillation, and prints each one's median wall time and its ratio to the
plain job. Run it on an idle machine: two processes sharing 2 cores make
timings swing tenfold.

    python experiments/bench_genkd.py [--samples 96] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from driftlab.platform.distill.frames import GENKD_DIM, GenKDTargets
from driftlab.platform.distill.models import FeatureCVAE
from driftlab.platform.models import build_student
from driftlab.platform.training import TrainSpec, fit
from driftlab.platform.world import WorldConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=96, help="frames per job (default preset: ~96)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    world = WorldConfig()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.samples, world.size, world.size, 3), dtype=np.uint8)
    labels = rng.integers(0, world.num_classes, args.samples)
    logits = rng.normal(size=(args.samples, world.num_classes)).astype(np.float32)
    teacher_cvae = FeatureCVAE(GENKD_DIM, (2, 2)).state_dict()
    attention = rng.random((args.samples, GENKD_DIM)).astype(np.float32)
    jobs = {"plain": (0.0, {}), "hinton": (0.9, {"teacher_logits": logits}),
            "genkd": (0.0, {"plugins": [GenKDTargets(attention, teacher_cvae)]})}
    medians = {}
    for name, (kd, extra) in jobs.items():
        times = []
        for r in range(args.repeats):
            model = build_student("mobilenet_v3_small", world.num_classes)
            start = time.perf_counter()
            fit(model, images, labels, TrainSpec(epochs=2, kd_weight=kd, seed=r), **extra)
            times.append(time.perf_counter() - start)
        medians[name] = float(np.median(times))
        print(f"{name:>7}: median {medians[name]:.2f} s per job "
              f"({args.samples} samples x 2 epochs; runs {', '.join(f'{t:.2f}' for t in times)})")
    for name in ("hinton", "genkd"):
        print(f"{name} / plain: {medians[name] / medians['plain']:.2f}")


if __name__ == "__main__":
    main()
