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
    python experiments/drift_sim.py --strategies ams,ams+refit,edgesync-refit,edgesync
    python experiments/drift_sim.py --inline --seed 0,1,2 --out runs/seeds   # mean ± std over seeds
    python experiments/drift_sim.py --inline --seed 0,1,2 --out runs/seeds --resume  # after a kill
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import pandas as pd

from driftlab.platform.config import (DISTILL_WEIGHTS, ConfigError, SimConfig, config_from_dict, describe_sources,
                                     load_config)
from driftlab.platform.metrics import format_seed_table, format_table, over_seeds, write_atomic, write_parquet
from driftlab.platform.strategies import COMPONENTS, STRATEGIES, parse_strategies
from driftlab.platform.world import SCENARIOS
from driftlab.platform.world.recorded import VideoError, expand_source_arg


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of SimConfig fields (flags override it)")
    p.add_argument("--scenario", help=f"drift scenario: {', '.join(SCENARIOS)}")
    p.add_argument("--cameras", type=int, help="number of cameras")
    p.add_argument("--duration", type=float, help="stream seconds per camera")
    p.add_argument("--strategies", help=f"comma-separated, from: {', '.join(STRATEGIES)}; a name may add "
                                        f"(+) or drop (-) components: {', '.join(COMPONENTS)} "
                                        "(e.g. periodic+cp retrains on change points of the camera's "
                                        "feature stream, ams+refit refits BatchNorm on the camera, "
                                        "edgesync-refit does not, ams+zoo keeps a model zoo)")
    p.add_argument("--seed", help="seed of streams, models and jobs; several (e.g. 0,1,2) run "
                                  "each and report every strategy's mean ± std over them")
    p.add_argument("--distill", help=f"what retraining learns from the teacher: "
                                     f"{' or '.join(DISTILL_WEIGHTS)} (default hinton: its logits and labels)")
    p.add_argument("--source", help="recordings the cameras play, one camera each: a video file, a "
                                    "comma-separated list of them, or a directory of video files "
                                    "(config: sources, which also takes frame directories, offsets, fps)")
    p.add_argument("--labels", help="CSV (frame,label) of ground truth for a single --source")
    p.add_argument("--out", help="directory for Parquet results, plot and config")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run of the same command in --out: finished seeds and "
                        "strategies are read back, the interrupted strategy runs again")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    ray.add_argument("--address", help="join this Ray cluster ('auto': the local one; "
                                       "default: $RAY_ADDRESS, else start an embedded Ray)")
    ray.add_argument("--num-cpus", type=float, help="logical CPUs of the embedded Ray")
    ray.add_argument("--cameras-per-actor", type=int,
                     help="cameras one camera-group actor hosts (default: up to 32, at least one group per node)")
    ray.add_argument("--cpus-per-camera", type=float, default=0.25)
    ray.add_argument("--gpus-per-camera", type=float, default=0.0)
    ray.add_argument("--teacher-replicas", type=int, default=1)
    ray.add_argument("--teacher-batch", type=int, default=16, help="uploads per batched teacher call")
    ray.add_argument("--train-workers", type=int, default=1)
    ray.add_argument("--strategies-at-once", type=int,
                     help="strategies whose fleets run at the same time (default: all)")
    ray.add_argument("--http-host", default="127.0.0.1",
                     help="address the teacher's HTTP route binds to (0.0.0.0 opens it to the network, "
                          "without authentication)")
    ray.add_argument("--http-port", type=int, default=8000, help="Serve HTTP port (teacher route)")
    return p.parse_args(argv)


def parse_seeds(text: str | None) -> list[int]:
    """``--seed``: one seed or a comma-separated list of distinct ones."""
    if text is None:
        return []
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seed must be an integer or a comma-separated list of them, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seed lists a seed twice: {text!r}")
    return seeds


def resolve_config(args: argparse.Namespace) -> tuple[SimConfig, list[int]]:
    """The run's config and the seeds to run it with."""
    cfg = load_config(args.config) if args.config else SimConfig()
    seeds = parse_seeds(args.seed)
    overrides = {k: v for k, v in {
        "scenario": args.scenario, "cameras": args.cameras, "duration": args.duration,
        "seed": seeds[0] if seeds else None, "distill": args.distill, "sources": source_specs(args),
        "strategies": args.strategies.split(",") if args.strategies else None,
    }.items() if v is not None}
    cfg = config_from_dict(overrides, cfg)
    parse_strategies(cfg)  # unknown names fail here, before anything starts
    return cfg, seeds or [cfg.seed]


def source_specs(args: argparse.Namespace) -> list[dict] | None:
    """``--source`` and ``--labels`` as ``sources`` entries."""
    if args.source is None:
        if args.labels is not None:
            raise ConfigError("--labels needs --source (or labels: in a config's sources)")
        return None
    paths = expand_source_arg(args.source)
    if not paths:
        raise ConfigError(f"--source names no file: {args.source!r}")
    if args.labels is not None and len(paths) > 1:
        raise ConfigError("--labels goes with a single --source; give several cameras' labels in a "
                          "config's sources (sources: [{path: ..., labels: ...}])")
    if len(paths) == 1 and args.cameras:   # one recording, every camera plays it
        paths = paths * args.cameras
    return [{"path": p, **({"labels": args.labels} if args.labels else {})} for p in paths]


Runner = Callable[[SimConfig, "str | None"], pd.DataFrame]


def make_runner(cfg: SimConfig, args: argparse.Namespace) -> Runner:
    """``run(cfg, out_dir) -> summary``, inline or on Ray (started once for
    every seed, and only when a seed is left to run); with ``--resume`` a
    seed that finished in ``out_dir`` is read back."""
    from driftlab.platform.runner import finished_summary

    started = []

    def run(c: SimConfig, out: str | None) -> pd.DataFrame:
        done = finished_summary(c, out) if args.resume and out else None
        if done is not None:
            print(f"resuming {out}: finished before", flush=True)
            return done
        if not started:
            started.append(start_runner(cfg, args))
        return started[0](c, out)
    return run


def start_runner(cfg: SimConfig, args: argparse.Namespace) -> Callable[[SimConfig, "str | None"], pd.DataFrame]:
    """The inline runner, or Ray started (or joined) for the runs."""
    progress, resume = not args.no_progress, args.resume
    if args.inline:
        from driftlab.platform.runner import run_inline

        return lambda c, out: run_inline(c, out_dir=out, progress=progress, resume=resume)
    from driftlab.actors.runner import RayOptions, run_on_ray, start_ray

    opts = RayOptions(address=args.address, num_cpus=args.num_cpus, cameras_per_actor=args.cameras_per_actor,
                      cpus_per_camera=args.cpus_per_camera, gpus_per_camera=args.gpus_per_camera,
                      teacher_replicas=args.teacher_replicas, teacher_batch=args.teacher_batch,
                      train_workers=args.train_workers, http_host=args.http_host, http_port=args.http_port,
                      strategies_at_once=args.strategies_at_once)
    url = start_ray(cfg, opts)
    print(f"Ray dashboard: {url or 'not running (install ray[default])'}", flush=True)
    return lambda c, out: run_on_ray(c, opts, out_dir=out, progress=progress, resume=resume)


def run_seeds(cfg: SimConfig, seeds: list[int], run: Runner, out: str | None) -> pd.DataFrame:
    """Run ``cfg`` once per seed (results in ``out/seed-N``), print each seed's
    table, and write every seed's summary to ``out/summary_by_seed.parquet`` as
    it finishes; return the summaries over seeds."""
    by_seed = []
    for seed in seeds:
        print(f"\n== seed {seed}", flush=True)
        summary = run(config_from_dict({"seed": seed}, cfg), out and os.path.join(out, f"seed-{seed}"))
        print(format_table(summary), flush=True)
        by_seed.append(summary.assign(seed=seed))
        if out:
            write_parquet(pd.concat(by_seed, ignore_index=True), os.path.join(out, "summary_by_seed.parquet"))
    table = over_seeds(pd.concat(by_seed, ignore_index=True))
    if out:
        write_parquet(table, os.path.join(out, "summary_over_seeds.parquet"))
    return table


def current_commit() -> str:
    """The checkout's commit (``+changes`` when tracked files differ from it), read when a run starts."""
    import subprocess

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=here, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        commit += "+changes" if commit and dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or "unknown"


def write_provenance(cfg: SimConfig, argv: list[str], out: str, commit: str) -> None:
    """``out/run.json``: the command, commit (as the run started), date and
    model cache of a run (what ``experiments/report.py`` cites under a table)."""
    import datetime
    import hashlib
    import json

    from driftlab.platform.pretrained import with_teacher_weights

    with open(with_teacher_weights(cfg.world, cfg.teacher, log=lambda *_: None).weights, "rb") as f:
        model_cache = "teacher " + hashlib.sha256(f.read()).hexdigest()[:12]
    info = {"command": " ".join(["python experiments/drift_sim.py", *argv]), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "model_cache": model_cache}
    write_atomic(os.path.join(out, "run.json"), json.dumps(info, indent=1))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    commit = current_commit()
    try:
        if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ConfigError(f"--out {args.out} is a file; give a directory for the results")
        if args.resume and not args.out:
            raise ConfigError("--resume continues the run in --out DIR; give --out")
        cfg, seeds = resolve_config(args)
        t0 = time.time()
        print(f"driftlab: {len(cfg.strategies)} strategies x {cfg.cameras} cameras, "
              f"{'scenario ' + cfg.scenario if not cfg.sources else describe_sources(cfg)}, "
              f"{cfg.duration:.0f} s of stream, seed {','.join(map(str, seeds))}", flush=True)
        run = make_runner(cfg, args)
        if len(seeds) == 1:
            table = format_table(run(cfg, args.out))
        else:
            table = f"mean ± std over seeds {','.join(map(str, seeds))}\n" + format_seed_table(
                run_seeds(cfg, seeds, run, args.out))
        if args.out:
            write_provenance(cfg, argv, args.out, commit)
    except (ConfigError, VideoError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(table)
    print(f"\nwall time {time.time() - t0:.0f} s" + (f"; results in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
