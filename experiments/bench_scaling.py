"""Benchmark: how a fleet scales on Ray, in wall time and memory.

Runs one strategy (default ``edgesync`` on ``day_night``) on the Ray runner
for each fleet size and writes one row per size to ``DIR/scaling.parquet``:

- ``realtime_factor``: stream seconds simulated per wall second after
  start-up (from the end of the first tick to the end of the last), so 1.0
  keeps up with live cameras;
- ``frames_per_s``: camera frames inferred per wall second, the same span;
- ``startup_s``: from the call to the end of the first tick (Serve, the
  Train pool, the fleet's actors; the students come from the cache);
- ``cpu_s``: CPU-seconds the node used over the same span as ``wall_s``;
- ``peak_rss_mb``: the peak, over the run, of the whole Ray node's resident
  memory (this driver and every process it started: GCS, raylets, workers;
  unique set sizes, so shared pages count once), and ``rss_per_camera_mb``
  that peak over the cameras. The printed marginal cost per camera is the
  slope between the smallest and the largest fleet.

Each camera's initial student is trained first, once, as Ray tasks, and
cached (``--warmup`` seconds of its past; the preset's 400 s take ~21 s per
camera on 2 cores, ``--warmup 40`` about a fifth: poorer students, the same
work per frame). ``--nodes N`` runs on a local N-node cluster
(``ray.cluster_utils.Cluster``) on this machine's cores.

    python experiments/bench_scaling.py --cameras 1,4,16,64 --duration 120 --out DIR [--nodes N]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

from driftlab.actors.runner import (RayOptions, group_size, plan_resources, run_on_ray, start_local_cluster,  # noqa: E402
                                    start_ray, train_students_on_ray)
from driftlab.platform.config import SimConfig  # noqa: E402
from driftlab.platform.metrics import write_parquet  # noqa: E402
from driftlab.platform.runner import build_fleet  # noqa: E402

COLUMNS = ["cameras", "cameras_per_actor", "actors", "nodes", "wall_s", "stream_s", "realtime_factor",
           "frames_per_s", "startup_s", "cpu_s", "peak_rss_mb", "rss_per_camera_mb"]


class NodeUsage:
    """Samples, every ``every`` seconds, this process and all its descendants
    (a local Ray's whole node, or nodes): the peak of their summed unique set
    sizes, and the CPU-seconds they used since the start (a process that ends
    between samples loses at most ``every`` seconds of its count)."""

    def __init__(self, every: float = 5.0):
        self.every, self.peak = every, 0.0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._sample(first=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def cpu_s(self) -> float:
        """CPU-seconds used since the start, sampled now."""
        self._sample()
        return sum(self._cpu_last[p] - self._cpu_first[p] for p in self._cpu_last)

    def _sample(self, first: bool = False) -> None:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    info, cpu = p.memory_full_info(), p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += getattr(info, "uss", info.rss)
            used = cpu.user + cpu.system
            self._cpu_first.setdefault(p.pid, used if first else 0.0)
            self._cpu_last[p.pid] = used
        self.peak = max(self.peak, total / 2**20)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> tuple[float, float]:
        """(peak MB, CPU-seconds used)."""
        self._stop.set()
        self._thread.join()
        return self.peak, self.cpu_s()


def bench_config(n: int, args) -> SimConfig:
    return SimConfig(cameras=n, duration=args.duration, strategies=(args.strategy,),
                     scenario=args.scenario, warmup=args.warmup, seed=args.seed)


def run_one(n: int, args, opts: RayOptions) -> dict:
    cfg = bench_config(n, args)
    marks: dict[int, float] = {}
    usage = NodeUsage()
    started_cpu = []

    def after_tick(_strategy: str, k: int) -> None:
        if k == 0:
            started_cpu.append(usage.cpu_s())
        marks[k] = time.perf_counter()

    t0 = time.perf_counter()
    run_on_ray(cfg, opts, progress=False, log=lambda m: print(f"  {m}", flush=True), after_tick=after_tick)
    peak, cpu_s = usage.stop()
    cpu_s -= started_cpu[0]
    last = max(marks)
    span = marks[last] - marks[0]
    stream = last * cfg.tick  # ticks 1..last, after the first
    per_actor = opts.cameras_per_actor or group_size(n, len(ray.nodes()))
    return {"cameras": n, "cameras_per_actor": per_actor, "actors": math.ceil(n / per_actor),
            "nodes": sum(1 for x in ray.nodes() if x.get("Alive")), "wall_s": span, "stream_s": stream,
            "realtime_factor": stream / span, "frames_per_s": n * stream * cfg.world.fps / span,
            "startup_s": marks[0] - t0, "cpu_s": cpu_s, "peak_rss_mb": peak, "rss_per_camera_mb": peak / n}


def markdown(df: pd.DataFrame, note: str) -> str:
    """The table as Markdown, with the command, commit and date that made it."""
    def cell(x) -> str:
        return f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = [note, "", "| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _provenance(args) -> str:
    import datetime

    from drift_sim import current_commit  # this script's folder is on sys.path

    return (f"`python experiments/bench_scaling.py {' '.join(sys.argv[1:])}` at commit {current_commit()}, "
            f"{datetime.date.today()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
            f"{args.strategy} on {args.scenario}, warm-up {args.warmup:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", default="1,4,16,64", help="fleet sizes, comma-separated")
    p.add_argument("--duration", type=float, default=120.0, help="stream seconds per run")
    p.add_argument("--strategy", default="edgesync")
    p.add_argument("--scenario", default="day_night")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=float, default=400.0, help="seconds of past each initial student trains on")
    p.add_argument("--cameras-per-actor", type=int, default=None, help="default: the runner's")
    p.add_argument("--nodes", type=int, default=1, help="a local multi-node cluster of this many nodes")
    p.add_argument("--out", default="runs/bench_scaling")
    args = p.parse_args()
    try:
        counts = [int(c) for c in args.cameras.split(",")]
        if min(counts) < 1 or args.nodes < 1 or args.duration <= 0:
            raise ValueError
    except ValueError:
        print(f"error: --cameras needs positive whole numbers, --nodes >= 1 and --duration > 0 "
              f"(got {args.cameras!r}, {args.nodes}, {args.duration})", file=sys.stderr)
        sys.exit(2)
    os.makedirs(args.out, exist_ok=True)
    cluster = None
    opts = RayOptions(cameras_per_actor=args.cameras_per_actor)
    if args.nodes > 1:  # logical CPUs for the largest fleet, as the embedded Ray sizes itself
        need = plan_resources(SimConfig(cameras=max(counts)), opts, {"CPU": math.inf, "GPU": math.inf})["CPU"]
        cluster = start_local_cluster(args.nodes, math.ceil(need / args.nodes) + 1)
    else:
        start_ray(SimConfig(cameras=max(counts), strategies=(args.strategy,)), opts)
    rows = []
    try:
        # Every camera's initial student first (cached): no row pays for them,
        # and the task workers that trained them are part of every row's base.
        build_fleet(bench_config(max(counts), args), log=print, train_students=train_students_on_ray)
        for n in counts:
            print(f"{n} cameras ...", flush=True)
            rows.append(run_one(n, args, opts))
            df = pd.DataFrame(rows, columns=COLUMNS)
            write_parquet(df, os.path.join(args.out, "scaling.parquet"))
            with open(os.path.join(args.out, "scaling.md"), "w") as f:
                f.write(markdown(df, _provenance(args)))
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    df = pd.DataFrame(rows, columns=COLUMNS)
    print(f"\n{args.strategy} on {args.scenario}, {args.duration:.0f} s streams, {args.nodes} node(s), "
          f"{os.cpu_count()} cores, warm-up {args.warmup:.0f} s")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if len(df) > 1:
        a, b = df.iloc[0], df.iloc[-1]
        extra = b.cameras - a.cameras
        print(f"beyond the base ({a.cameras:.0f} -> {b.cameras:.0f} cameras): "
              f"{(b.peak_rss_mb - a.peak_rss_mb) / extra:.1f} MB and "
              f"{(b.cpu_s - a.cpu_s) / (extra * args.duration):.4f} CPU-s per stream second per camera")
    print(f"wrote {os.path.join(args.out, 'scaling.parquet')} and scaling.md")


if __name__ == "__main__":
    main()
