"""Benchmark: simulation throughput on Ray vs the number of cameras.

Runs the ``edgesync`` strategy on Ray for 1, 2, 4, 8 cameras (same stream
length, the server budget fixed) and prints stream frames simulated per
wall-clock second, counted from the end of the first tick (start-up of
actors, Serve and Ray Train excluded; it is printed apart). ``--compare``
also times one preset on Ray and inline, start-up included.

    python experiments/bench_scaling.py [--cameras 1,2,4,8] [--duration 300] [--compare]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from driftlab.actors.runner import RayOptions, run_on_ray, start_ray  # noqa: E402
from driftlab.platform.config import SimConfig  # noqa: E402
from driftlab.platform.runner import run_inline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", default="1,2,4,8")
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--strategy", default="edgesync")
    p.add_argument("--compare", action="store_true",
                   help="also time the default preset on Ray and inline (minutes)")
    args = p.parse_args()
    counts = [int(c) for c in args.cameras.split(",")]
    quiet = lambda *_: None  # noqa: E731
    start_ray(SimConfig(cameras=max(counts)), RayOptions())
    rows = []
    for n in counts:
        cfg = SimConfig(cameras=n, duration=args.duration, strategies=(args.strategy,))
        marks: dict[int, float] = {}
        t0 = time.perf_counter()
        run_on_ray(cfg, progress=False, log=quiet,
                   after_tick=lambda _s, k: marks.__setitem__(k, time.perf_counter()))
        total = time.perf_counter() - t0
        last = max(marks)
        frames = n * last * cfg.tick * cfg.world.fps   # ticks 1..last, after the first
        rows.append((n, frames / (marks[last] - marks[0]), marks[0] - t0, total))
        print(f"{n} cameras: {rows[-1][1]:7.1f} frames/s, start-up + first tick {rows[-1][2]:.0f} s, "
              f"total {total:.0f} s", flush=True)
    print(f"\n{args.strategy}, {args.duration:.0f} s streams, "
          f"{ray.cluster_resources().get('CPU', 0):.0f} logical CPUs on {os.cpu_count()} cores")
    print(" cameras  frames/s  start-up s  total s")
    for n, fps, start, total in rows:
        print(f" {n:>7d}  {fps:8.1f}  {start:10.0f}  {total:7.0f}")
    if args.compare:
        cfg = SimConfig()
        t = time.perf_counter()
        run_on_ray(cfg, progress=False, log=quiet)
        on_ray = time.perf_counter() - t
        t = time.perf_counter()
        run_inline(cfg, progress=False, log=quiet)
        inline = time.perf_counter() - t
        print(f"\ndefault preset ({len(cfg.strategies)} strategies x {cfg.cameras} cameras, "
              f"{cfg.duration:.0f} s): Ray {on_ray:.0f} s, inline {inline:.0f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
