"""Benchmark: teacher labeling through Ray Serve vs direct batched model calls.

Cameras send uploads of a few frames each, many at once. Serve batches
concurrent uploads (``@serve.batch``) into one forward pass. Compared with:
the same model called directly on batches of the same size (goal: Serve
reaches >= 0.7 of it), and Serve without batching (one forward per upload).

    python experiments/bench_teacher.py [--uploads 256] [--frames 8] [--batch 16]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from driftlab.deployments.teacher import TeacherOptions, deploy_teacher  # noqa: E402
from driftlab.platform.config import SimConfig  # noqa: E402
from driftlab.platform.models import predict  # noqa: E402
from driftlab.platform.runner import set_determinism  # noqa: E402
from driftlab.platform.world import CONDITIONS, render_condition_set  # noqa: E402
from driftlab.platform.pretrained import load_teacher, with_teacher_weights  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=256, help="concurrent upload requests")
    p.add_argument("--frames", type=int, default=8, help="frames per upload")
    p.add_argument("--batch", type=int, default=16, help="uploads per Serve batch")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    set_determinism()
    cfg = SimConfig()
    spec = with_teacher_weights(cfg.world, cfg.teacher)
    per = -(-args.uploads * args.frames // len(CONDITIONS))
    images = render_condition_set(cfg.world, list(CONDITIONS), per, seed=5).images
    uploads = [images[i * args.frames:(i + 1) * args.frames] for i in range(args.uploads)]
    n = args.uploads * args.frames

    model = load_teacher(cfg.world, cfg.teacher)

    def direct() -> float:
        t = time.perf_counter()
        for i in range(0, args.uploads, args.batch):
            predict(model, np.concatenate(uploads[i:i + args.batch]))
        return n / (time.perf_counter() - t)

    ray.init(num_cpus=2, logging_level="warning", configure_logging=True)
    serve.start(logging_config={"log_level": "WARNING", "enable_access_log": False})
    def served(batch: int) -> float:
        """Frames/s of the deployment batching ``batch`` uploads per call (1: unbatched)."""
        handle = deploy_teacher(TeacherOptions(spec, cfg.num_classes, cfg.world.size,
                                               max_batch_size=batch, batch_wait_timeout_s=0.01, num_cpus=1))

        def once() -> float:
            t = time.perf_counter()
            for r in [handle.label.remote(u) for u in uploads]:
                r.result()
            return n / (time.perf_counter() - t)

        once()  # warm-up
        return max(once() for _ in range(args.repeats))

    direct()  # warm-up
    best = {
        "direct batched": max(direct() for _ in range(args.repeats)),
        "Serve batched": served(args.batch),
        "Serve unbatched": served(1),
    }
    print(f"{args.uploads} uploads x {args.frames} frames, {args.batch} uploads per batch, "
          f"{cfg.teacher.arch}, best of {args.repeats}")
    for name, fps in best.items():
        print(f"  {name:>15}: {fps:8.0f} frames/s")
    print(f"  Serve batched / direct: {best['Serve batched'] / best['direct batched']:.2f}  (goal >= 0.7)")
    print(f"  Serve batched / unbatched: {best['Serve batched'] / best['Serve unbatched']:.2f}")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
