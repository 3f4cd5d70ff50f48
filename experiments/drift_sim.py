"""Which adaptation strategy keeps a camera fleet accurate under drift, at what cost?

Runs every strategy on the same drifting streams and prints one table:
mean accuracy, accuracy during drift, mean update delay, frames uploaded and
GPU-seconds. ``--out DIR`` also writes frames/jobs/summary Parquet, the
accuracy plot and the resolved config.

    python experiments/drift_sim.py                       # default preset
    python experiments/drift_sim.py --scenario weather --cameras 6 --out runs/weather
"""
from __future__ import annotations

import argparse
import sys
import time

from driftlab.platform.config import ConfigError, SimConfig, config_from_dict, load_config
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
    p.add_argument("--strategies", help=f"comma-separated, from: {', '.join(STRATEGIES)}")
    p.add_argument("--seed", type=int, help="seed of streams, models and jobs")
    p.add_argument("--source", help="a video file every camera reads instead of the synthetic world")
    p.add_argument("--labels", help="CSV (frame,label) of ground truth for --source")
    p.add_argument("--out", help="directory for Parquet results, plot and config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> SimConfig:
    cfg = load_config(args.config) if args.config else SimConfig()
    overrides = {k: v for k, v in {
        "scenario": args.scenario, "cameras": args.cameras, "duration": args.duration,
        "seed": args.seed, "source": args.source, "source_labels": args.labels,
        "strategies": args.strategies.split(",") if args.strategies else None,
    }.items() if v is not None}
    return config_from_dict(overrides, cfg)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        from driftlab.platform.runner import run_inline

        t0 = time.time()
        print(f"driftlab: {len(cfg.strategies)} strategies x {cfg.cameras} cameras, "
              f"scenario {cfg.scenario if not cfg.source else cfg.source}, "
              f"{cfg.duration:.0f} s of stream, seed {cfg.seed}", flush=True)
        summary = run_inline(cfg, out_dir=args.out, progress=not args.no_progress)
    except (ConfigError, VideoError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_table(summary))
    print(f"\nwall time {time.time() - t0:.0f} s" + (f"; results in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
