"""Benchmark: camera inference through a Ray camera-group actor vs the same loop in this process.

Both play the same stream tick by tick with the same student (render frames,
infer them in one batch per tick); the actor adds only Ray's call overhead.
Prints frames/s of each and their ratio (goal >= 0.8), plus the bare torch
loop on pre-rendered frames for reference.

    python experiments/bench_camera.py [--tick 10] [--seconds 600]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from driftlab.actors.camera import CameraGroupActor, CameraProxy  # noqa: E402
from driftlab.platform.config import SimConfig  # noqa: E402
from driftlab.platform.models import build_student, predict  # noqa: E402
from driftlab.platform.runner import set_determinism  # noqa: E402
from driftlab.platform.camera import build_camera  # noqa: E402
from driftlab.platform.strategies import parse_strategy  # noqa: E402
from driftlab.platform.world import CameraStream, get_scenario  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tick", type=float, default=10.0, help="stream seconds per inference call")
    p.add_argument("--seconds", type=float, default=600.0, help="stream seconds played")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    set_determinism()
    cfg = SimConfig(duration=args.seconds, strategies=("static",))
    static = parse_strategy("static")
    source = CameraStream(cfg.world, get_scenario(cfg.scenario), 0, 1, cfg.seed, cfg.duration)
    student = build_student(cfg.student, cfg.world.num_classes).eval()
    state = student.state_dict()
    ticks = [min((k + 1) * args.tick, args.seconds) for k in range(int(args.seconds // args.tick))]
    n = int(ticks[-1] * cfg.world.fps)
    batch = int(args.tick * cfg.world.fps)

    def local() -> float:
        cam = build_camera(static, cfg, 0, source, student, teach=None)
        t = time.perf_counter()
        for until in ticks:
            cam.run(until)
        return n / (time.perf_counter() - t)

    frames = source.frames(0, n).images

    def bare() -> float:
        t = time.perf_counter()
        for i in range(0, n, batch):
            predict(student, frames[i:i + batch])
        return n / (time.perf_counter() - t)

    ray.init(num_cpus=2, logging_level="warning", configure_logging=True)
    actor = CameraProxy(CameraGroupActor.options(num_cpus=1).remote([0], [ray.put(source)], [ray.put(state)],
                                                                    cfg, None))

    def through_actor() -> float:
        actor.reset()
        ray.get(actor.result(actor.submit("start", static)))
        t = time.perf_counter()
        for until in ticks:
            ray.get(actor.result(actor.submit("run", until)))
        return n / (time.perf_counter() - t)

    through_actor()  # warm-up: imports, first inference
    local()
    best = {name: max(fn() for _ in range(args.repeats))
            for name, fn in (("plain loop", local), ("Ray actor", through_actor), ("bare torch", bare))}
    print(f"{n} frames of {cfg.world.size}x{cfg.world.size}, {batch} per call, "
          f"{cfg.student.arch}, best of {args.repeats}")
    for name, fps in best.items():
        print(f"  {name:>10}: {fps:8.0f} frames/s")
    print(f"  actor / plain loop: {best['Ray actor'] / best['plain loop']:.2f}  (goal >= 0.8)")
    ray.shutdown()


if __name__ == "__main__":
    main()
