"""Faults survived: the same comparison on a local multi-node Ray cluster,
once clean and once while parts of it are killed.

The faulty run removes a worker node mid-run (what lived there goes with it:
camera groups, perhaps a teacher replica or a Train worker), kills camera-group
actors at random ticks, one teacher replica and one Ray Train worker. On the
virtual clock nothing a fault does may change a number: the script compares
the two runs' summaries and frame rows and ends with one line,

    chaos: <n> faults, summaries identical: <True|False>, frame rows lost: <k>

exiting 1 when they differ (2 on bad input). ``--out DIR`` keeps both runs'
results (``DIR/clean``, ``DIR/faulty``) and the faults injected
(``DIR/faults.parquet``).

    python experiments/chaos.py                                  # 3 nodes, 8 cameras, 300 s
    python experiments/chaos.py --nodes 2 --cameras 4 --duration 120 --strategies ams,edgesync
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402

from driftlab.actors.runner import RayOptions, plan_resources, run_on_ray, start_local_cluster  # noqa: E402
from driftlab.platform.config import ConfigError, SimConfig, config_from_dict, load_config  # noqa: E402
from driftlab.platform.metrics import format_table, write_parquet  # noqa: E402
from driftlab.platform.strategies import parse_strategies  # noqa: E402
from driftlab.platform.world.recorded import VideoError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of SimConfig fields (flags override it)")
    p.add_argument("--nodes", type=int, default=3, help="nodes of the local cluster (head included), at least 2")
    p.add_argument("--cameras", type=int, default=8)
    p.add_argument("--duration", type=float, default=300.0, help="stream seconds")
    p.add_argument("--strategies", help="comma-separated (default: the config's comparison)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    p.add_argument("--chaos-seed", type=int, default=0, help="seed of which parts die when")
    p.add_argument("--camera-kills", type=int, default=3, help="camera-group actors killed at random ticks")
    p.add_argument("--cameras-per-actor", type=int, default=2)
    p.add_argument("--out", help="directory for both runs' results and the faults")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def chaos_config(args: argparse.Namespace) -> SimConfig:
    if args.nodes < 2:
        raise ConfigError(f"--nodes must be at least 2 (a head and a worker node to lose), got {args.nodes}")
    if args.camera_kills < 0:
        raise ConfigError(f"--camera-kills must be >= 0, got {args.camera_kills}")
    cfg = load_config(args.config) if args.config else SimConfig()
    return config_from_dict({k: v for k, v in {
        "cameras": args.cameras, "duration": args.duration, "seed": args.seed,
        "strategies": args.strategies.split(",") if args.strategies else None}.items() if v is not None}, cfg)


class Chaos:
    """The faults of one run, injected from the runner's ``after_tick`` hook
    on the first strategy's clock: a teacher replica killed at a fifth of
    the run, a worker node removed at two fifths, a Train worker killed at
    three fifths, camera-group actors at random ticks."""

    def __init__(self, cluster, strategies: list[str], ticks: int, camera_kills: int, seed: int):
        rng = np.random.default_rng(seed)
        self.cluster, self.clock, self.rng = cluster, strategies[0], rng
        self.plan: dict[int, list[str]] = {}
        for tick, what in [(ticks // 5, "teacher replica"), (2 * ticks // 5, "worker node"),
                           (3 * ticks // 5, "Train worker")]:
            self.plan.setdefault(max(1, tick), []).append(what)
        for tick in rng.integers(1, max(2, ticks - 1), camera_kills):
            self.plan.setdefault(int(tick), []).append("camera group")
        self.strategies = strategies
        self.done: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, strategy: str, tick: int) -> None:
        if strategy != self.clock:
            return
        for what in self.plan.pop(tick, []):
            with self._lock:
                detail = getattr(self, "_" + what.lower().replace(" ", "_"))()
            self.done.append({"tick": tick, "fault": what, "detail": detail})
            print(f"  fault at {strategy} tick {tick}: {what}: {detail}", flush=True)

    def _alive(self, prefix: str, detail: bool = False) -> list:
        from ray.util.state import list_actors

        return [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=detail, limit=10_000)
                if a.class_name.startswith(prefix)]

    def _teacher_replica(self) -> str:
        replica = self._alive("ServeReplica:teacher")[0]
        ray.kill(ray.get_actor(replica.name, namespace="serve"), no_restart=True)
        return f"killed {replica.name}"

    def _worker_node(self) -> str:
        """Remove the worker node hosting most of the run's actors, at once (no graceful shutdown)."""
        ours = [a for a in self._alive("", detail=True) if (a.name or "").split("/")[0] in self.strategies
                or a.class_name.startswith(("ServeReplica:teacher", "RayTrainWorker"))]

        def on(node) -> list[str]:
            return sorted(a.name or a.class_name.split(":")[0] for a in ours if a.node_id == node.node_id)

        node = max(sorted(self.cluster.worker_nodes, key=lambda n: n.node_id), key=lambda n: len(on(n)))
        lived = on(node)
        self.cluster.remove_node(node, allow_graceful=False)
        return f"removed node {node.node_id[:8]} with {', '.join(lived) or 'nothing of the run'}"

    def _train_worker(self) -> str:
        workers = self._alive("RayTrainWorker", detail=True)
        if not workers:
            return "no Train worker alive (restarting): none killed"
        os.kill(workers[0].pid, signal.SIGKILL)   # every node of a local cluster is this machine
        return f"SIGKILLed Train worker pid {workers[0].pid}"

    def _camera_group(self) -> str:
        groups = [a for a in self._alive("CameraGroupActor") if (a.name or "").split("/")[0] in self.strategies]
        if not groups:
            return "no camera group alive: none killed"
        name = groups[int(self.rng.integers(len(groups)))].name
        ray.kill(ray.get_actor(name), no_restart=False)
        return f"killed {name}"


def run_both(cfg: SimConfig, opts: RayOptions, cluster, args: argparse.Namespace, out: str, log):
    """The clean run, then the faulty one; their summaries and the faults injected."""
    t0, ticks = time.time(), set()
    print("clean run ...", flush=True)
    clean = run_on_ray(cfg, opts, out_dir=os.path.join(out, "clean"), progress=not args.no_progress, log=log,
                       after_tick=lambda _s, k: ticks.add(k))
    print(f"clean run: {time.time() - t0:.0f} s\nfaulty run ...", flush=True)
    chaos = Chaos(cluster, list(cfg.strategies), len(ticks), args.camera_kills, args.chaos_seed)
    t0 = time.time()
    faulty = run_on_ray(cfg, opts, out_dir=os.path.join(out, "faulty"), progress=not args.no_progress,
                        log=log, after_tick=chaos)
    print(f"faulty run: {time.time() - t0:.0f} s", flush=True)
    return clean, faulty, chaos


def rows_lost(clean: pd.DataFrame, faulty: pd.DataFrame) -> int:
    """Frame rows of the clean run the faulty one lacks or changed."""
    cols = list(clean.columns)
    both = clean.merge(faulty[cols].drop_duplicates(), on=cols, how="left", indicator=True)
    return int((both["_merge"] == "left_only").sum())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = chaos_config(args)
        parse_strategies(cfg)
        opts = RayOptions(cameras_per_actor=args.cameras_per_actor, teacher_replicas=2,
                          http_port=_free_port())
    except (ConfigError, VideoError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", "chaos")
    # Every node can hold the whole run, so the cluster still can after losing one.
    need = plan_resources(cfg, opts, {"CPU": math.inf, "GPU": math.inf}, len(cfg.strategies))["CPU"]
    print(f"chaos: {len(cfg.strategies)} strategies x {cfg.cameras} cameras, {cfg.duration:.0f} s, "
          f"on a local {args.nodes}-node cluster", flush=True)
    cluster = start_local_cluster(args.nodes, math.ceil(need) + 1)
    log = lambda m: print(f"  {m}", flush=True)  # noqa: E731
    try:
        clean, faulty, chaos = run_both(cfg, opts, cluster, args, out, log)
    except (ConfigError, VideoError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
        cluster.shutdown()
    write_parquet(pd.DataFrame(chaos.done, columns=["tick", "fault", "detail"]), os.path.join(out, "faults.parquet"))
    frames = [pd.read_parquet(os.path.join(out, run, "frames.parquet")) for run in ("clean", "faulty")]
    identical = clean.equals(faulty)
    lost = rows_lost(*frames)
    print("\nclean\n" + format_table(clean) + "\n\nfaulty\n" + format_table(faulty) + "\n")
    print(f"chaos: {len(chaos.done)} faults, summaries identical: {identical}, frame rows lost: {lost}")
    return 0 if identical and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
