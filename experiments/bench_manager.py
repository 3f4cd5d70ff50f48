"""Benchmark: the server's per-request cost, and whether it grows with the run.

Feeds a strategy's manager (:class:`~driftlab.platform.sim.FleetManager`:
sample stores, training manager, GPU timeline) the uploads of N cameras,
tick after tick, with jobs that return at once (no training: only the
manager's own bookkeeping is timed), and prints milliseconds of manager time
per upload in the first and the last quarter of the run, with the frames the
server holds at the end. Flat per-camera costs mean the two quarters match
and the held frames stop growing after the strategy's lookback.

    python experiments/bench_manager.py [--cameras 16,64,256] [--duration 1200] [--strategy edgesync]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from driftlab.platform.camera import Upload
from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student
from driftlab.platform.sim import FleetManager
from driftlab.platform.strategies import parse_strategy
from driftlab.platform.training import FitResult


def run(cameras: int, duration: float, strategy: str) -> tuple[float, float, int]:
    cfg = SimConfig(cameras=cameras, duration=duration)
    strat = parse_strategy(strategy)
    student = build_student(cfg.student, cfg.world.num_classes)
    state = student.state_dict()
    manager = FleetManager(cfg, [student] * cameras,
                           execute=lambda batch: [(state, FitResult(1, len(j.labels))) for j in batch])
    manager.start(strat)
    period = strat.camera_policy(cfg, 0).period()
    every = max(1, int(round(period / cfg.tick)))
    per = int(cfg.upload_fraction * period * cfg.world.fps)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (per, cfg.world.size, cfg.world.size, 3), dtype=np.uint8)
    ticks = int(duration / cfg.tick)
    spent: list[tuple[int, float]] = []
    for k in range(ticks):
        now = (k + 1) * cfg.tick
        started = time.perf_counter()
        manager.serve(now)
        n = 0
        if (k + 1) % every == 0:
            ups = []
            for c in range(cameras):
                logits = rng.normal(size=(per, cfg.world.num_classes)).astype(np.float32)
                ups.append(Upload(c, images, now - period + np.arange(per) * period / per, {"logits": logits},
                                  est_accuracy=float(rng.uniform(0.3, 0.9)), mix_shift=float(rng.uniform(0, 0.3)),
                                  last_update=0.0, condition=rng.uniform(0, 1, 6).astype(np.float32)))
            manager.submit(now, [ups])
            n = cameras
        spent.append((n, time.perf_counter() - started))
    q = max(1, len(spent) // 4)

    def ms_per_upload(part):
        return 1e3 * sum(s for _, s in part) / max(1, sum(n for n, _ in part))

    held = sum(len(p.labels) for s in manager.server.stores for p in s.parts)
    return ms_per_upload(spent[:q]), ms_per_upload(spent[-q:]), held


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", default="16,64,256")
    p.add_argument("--duration", type=float, default=1200.0)
    p.add_argument("--strategy", default="edgesync")
    args = p.parse_args()
    print(f"{args.strategy}, {args.duration:.0f} s of uploads, jobs return at once")
    print(" cameras  ms/upload first quarter  ms/upload last quarter  frames held at the end")
    for n in [int(c) for c in args.cameras.split(",")]:
        first, last, held = run(n, args.duration, args.strategy)
        print(f" {n:>7d}  {first:22.2f}  {last:22.2f}  {held:22d}", flush=True)


if __name__ == "__main__":
    main()
