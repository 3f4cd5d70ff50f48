"""Which adaptation strategy keeps a camera fleet accurate under drift, at what cost?

Runs every strategy on the same drifting streams and prints one table:
mean accuracy, accuracy during drift, mean update delay, reaction time to
drift, frames uploaded and GPU-seconds. ``--out DIR`` also writes frames/jobs/summary Parquet, the
accuracy plot and the resolved config.

By default the loop runs on Ray: camera actors, the teacher on Ray Serve,
retraining on Ray Train, on an embedded local Ray (``--address auto`` joins a
running cluster). ``--inline`` runs the same loop in one process; both give
the same numbers for the same seed.

    python experiments/drift_sim.py                       # default preset, on Ray
    python experiments/drift_sim.py --scenario weather --cameras 6 --out runs/weather
    python experiments/drift_sim.py --address auto --gpus-per-camera 0.1
    python experiments/drift_sim.py --strategies periodic,periodic+cp,edgesync,edgesync+cp
"""
from __future__ import annotations

import argparse
import sys
import time

from driftlab.platform.config import DISTILL_WEIGHTS, ConfigError, SimConfig, config_from_dict, load_config
from driftlab.platform.metrics import format_table
from driftlab.platform.strategies import STRATEGIES
from driftlab.platform.world import SCENARIOS, VideoError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of SimConfig fields (flags override it)")
    p.add_argument("--scenario", help=f"drift scenario: {', '.join(SCENARIOS)}")
    p.add_argument("--cameras", type=int, help="number of cameras")
    p.add_argument("--duration", type=float, help="stream seconds per camera")
    p.add_argument("--strategies", help=f"comma-separated, from: {', '.join(STRATEGIES)}; "
                                        "add +cp to an adapting one (e.g. periodic+cp) to retrain "
                                        "on change points of the camera's feature stream")
    p.add_argument("--seed", type=int, help="seed of streams, models and jobs")
    p.add_argument("--distill", help=f"what retraining learns from the teacher: "
                                     f"{' or '.join(DISTILL_WEIGHTS)} (default hinton: its logits and labels)")
    p.add_argument("--source", help="a video file every camera reads instead of the synthetic world")
    p.add_argument("--labels", help="CSV (frame,label) of ground truth for --source")
    p.add_argument("--out", help="directory for Parquet results, plot and config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    ray.add_argument("--address", help="join this Ray cluster ('auto': the local one; "
                                       "default: $RAY_ADDRESS, else start an embedded Ray)")
    ray.add_argument("--num-cpus", type=float, help="logical CPUs of the embedded Ray")
    ray.add_argument("--cpus-per-camera", type=float, default=0.25)
    ray.add_argument("--gpus-per-camera", type=float, default=0.0)
    ray.add_argument("--teacher-replicas", type=int, default=1)
    ray.add_argument("--teacher-batch", type=int, default=16, help="uploads per batched teacher call")
    ray.add_argument("--train-workers", type=int, default=1)
    ray.add_argument("--http-port", type=int, default=8000, help="Serve HTTP port (teacher route)")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> SimConfig:
    cfg = load_config(args.config) if args.config else SimConfig()
    overrides = {k: v for k, v in {
        "scenario": args.scenario, "cameras": args.cameras, "duration": args.duration,
        "seed": args.seed, "distill": args.distill, "source": args.source, "source_labels": args.labels,
        "strategies": args.strategies.split(",") if args.strategies else None,
    }.items() if v is not None}
    return config_from_dict(overrides, cfg)


def run(cfg: SimConfig, args: argparse.Namespace):
    if args.inline:
        from driftlab.platform.runner import run_inline

        return run_inline(cfg, out_dir=args.out, progress=not args.no_progress)
    from driftlab.actors.runner import RayOptions, run_on_ray, start_ray

    opts = RayOptions(address=args.address, num_cpus=args.num_cpus,
                      cpus_per_camera=args.cpus_per_camera, gpus_per_camera=args.gpus_per_camera,
                      teacher_replicas=args.teacher_replicas, teacher_batch=args.teacher_batch,
                      train_workers=args.train_workers,
                      http_port=args.http_port)
    url = start_ray(cfg, opts)
    print(f"Ray dashboard: {url or 'not running (install ray[default])'}", flush=True)
    return run_on_ray(cfg, opts, out_dir=args.out, progress=not args.no_progress)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        t0 = time.time()
        print(f"driftlab: {len(cfg.strategies)} strategies x {cfg.cameras} cameras, "
              f"scenario {cfg.scenario if not cfg.source else cfg.source}, "
              f"{cfg.duration:.0f} s of stream, seed {cfg.seed}", flush=True)
        summary = run(cfg, args)
    except (ConfigError, VideoError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_table(summary))
    print(f"\nwall time {time.time() - t0:.0f} s" + (f"; results in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
