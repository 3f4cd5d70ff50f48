"""Generative feature distillation for action recognition (seed 2) vs baselines.

Trains (or loads from the cache) the action teacher with its CVAE, then a
student from scratch per method and seed: no KD, Hinton logit KD, FitNets
hint, attention transfer, and ours (generative + attention distillation);
``--methods`` also takes ours without a part (``genkd-gen``, ``genkd-att``).
Prints top-1 on the test split (mean ± sample std over seeds) with parameters
and multiply-accumulates per clip, and each method's paired difference per
seed against no KD and against Hinton KD; writes results.parquet, top1.png
and results.md (the table with its command and commit; ``--report FILE``
writes it there too, e.g. into docs/results/).

    python experiments/action_kd.py [--seeds 5] [--out runs/action_kd]
    python experiments/action_kd.py --ray          # students as Ray Train jobs
    python experiments/action_kd.py --quick
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable

import pandas as pd
import torch

from driftlab.platform.distill import (ABLATIONS, METHODS, ClipConfig, DistillConfig, DistillJob, accuracy,
                                       action_student, cached_teacher, count_macs, count_params,
                                       make_clips, teacher_targets)
from driftlab.platform.metrics import write_atomic, write_parquet
from driftlab.platform.models import default_device
from driftlab.platform.runner import set_determinism

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="student seeds per method")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: "
                   + ", ".join((*METHODS, *ABLATIONS)))
    p.add_argument("--train-clips", type=int, default=2800)
    p.add_argument("--test-clips", type=int, default=700)
    p.add_argument("--epochs", type=int, default=10, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--ray", action="store_true", help="run the students as Ray Train jobs")
    p.add_argument("--address", default=None, help="Ray cluster to join (with --ray)")
    p.add_argument("--train-workers", type=int, default=1, help="Ray Train workers (with --ray)")
    p.add_argument("--quick", action="store_true", help="a tiny run for tests")
    p.add_argument("--out", default="runs/action_kd")
    p.add_argument("--report", default=None, help="also write the Markdown results here")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS and m not in ABLATIONS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join((*METHODS, *ABLATIONS))}")
    if args.quick:
        args.train_clips, args.test_clips, args.epochs, args.teacher_epochs = 140, 70, 2, 2
        args.seeds = min(args.seeds, 2)
    if min(args.seeds, args.train_clips, args.test_clips, args.epochs, args.teacher_epochs) < 1:
        p.error("--seeds, --train-clips, --test-clips and the epochs must be >= 1")
    return args


def run_jobs(jobs: list[DistillJob], args, done: Callable[[DistillJob, tuple | None], None],
             device: torch.device | str = "cpu", log=print) -> None:
    """Run the students inline on ``device`` (``done`` after each) or as Ray
    Train jobs (one fit() for all, ``done`` for each once the batch is back)."""
    if not args.ray:
        for i, job in enumerate(jobs):
            t0 = time.time()
            done(job, job.run(device))
            log(f"[{i + 1}/{len(jobs)}] {job.method} seed {job.cfg.seed}: {time.time() - t0:.0f} s")
        return
    import ray

    from driftlab.actors.trainer import TrainPool

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=args.address, num_cpus=None if args.address else max(os.cpu_count() or 1, 2),
             configure_logging=True, logging_level="warning")
    pool = TrainPool(num_workers=args.train_workers,
                     gpus_per_worker=0.5 if ray.cluster_resources().get("GPU", 0) else 0.0)
    try:
        log(f"running {len(jobs)} distillation jobs on Ray Train ({args.train_workers} worker(s))")
        for job, res in zip(jobs, pool.client().run(jobs, log=log)):
            done(job, res)
    finally:
        pool.close()
        ray.shutdown()


def paired(df: pd.DataFrame, method: str, reference: str) -> str:
    """``method``'s test top-1 minus ``reference``'s, per seed: "mean ± std"
    in points ('' if either is missing)."""
    wide = df.pivot(index="seed", columns="method", values="test_top1")
    if method == reference or method not in wide or reference not in wide:
        return ""
    d = 100 * (wide[method] - wide[reference]).dropna()
    return f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}" if len(d) > 1 else f"{d.mean():+.1f}"


def table(df: pd.DataFrame, cost: dict) -> str:
    """Markdown: teacher and students (mean ± sample std over seeds), with
    each method's paired difference against no KD and against Hinton KD."""
    head = ["model / method", "params", "MMACs", "test top-1 %", "val top-1 %", "− none (paired)",
            "− hinton (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    t, s = cost["teacher"], cost["student"]
    lines.append(f"| teacher (r3d-18) | {t[0] / 1e6:.2f} M | {t[1] / 1e6:.1f} | {100 * cost['teacher_top1']:.1f} "
                 f"| {100 * cost['teacher_val']:.1f} | | |")
    for method, g in df.groupby("method", sort=False):
        std = g.test_top1.std(ddof=1) if len(g) > 1 else 0.0
        lines.append(f"| student: {method} | {s[0] / 1e6:.2f} M | {s[1] / 1e6:.1f} "
                     f"| {100 * g.test_top1.mean():.1f} ± {100 * std:.1f} | {100 * g.val_top1.mean():.1f} "
                     f"| {paired(df, method, 'none')} | {paired(df, method, 'hinton')} |")
    if "none" in set(df.method):
        gap = 100 * (cost["teacher_top1"] - df[df.method == "none"].test_top1.mean())
        lines.append(f"\nteacher − student without KD, test top-1: {gap:+.1f} points")
    return "\n".join(lines)


def results_markdown(df: pd.DataFrame, cost: dict, clip_cfg: ClipConfig, args, wall_s: float) -> str:
    """The table with what made it: command, commit, date, clips, epochs."""
    import datetime

    from drift_sim import current_commit  # this script's folder is on sys.path

    return (f"# Action students by distillation method (seed 2)\n\n"
            f"Generated by `python experiments/action_kd.py {' '.join(args.argv)}` at commit "
            f"{current_commit()}, {datetime.date.today()}, {os.cpu_count()} cores, {wall_s:.0f} s; do not edit "
            f"by hand. {args.train_clips} training clips ({clip_cfg.frames} frames of {clip_cfg.size} px, "
            f"{clip_cfg.num_classes} classes), teacher {args.teacher_epochs} and students {args.epochs} epochs, "
            f"seeds 0-{args.seeds - 1}; mean ± sample std over seeds, differences paired by seed.\n\n"
            + table(df, cost) + "\n")


def plot(df: pd.DataFrame, teacher_top1: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = df.groupby("method", sort=False).test_top1
    mean, std = 100 * g.mean(), 100 * g.std(ddof=1).fillna(0.0)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(mean.index, mean.values, yerr=std.values, capsize=4,
           color=["C7" if m != "genkd" else "C3" for m in mean.index])
    ax.axhline(100 * teacher_top1, color="k", ls="--", lw=1, label="teacher")
    ax.set(ylabel="test top-1 (%)", title="Action students by distillation method (mean ± std over seeds)",
           ylim=(max(0.0, mean.min() - 15), 100))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_determinism()
    os.makedirs(args.out, exist_ok=True)
    clip_cfg = ClipConfig()
    t0 = time.time()
    train = make_clips(clip_cfg, args.train_clips, TRAIN_SEED)
    val = make_clips(clip_cfg, max(args.test_clips // 2, clip_cfg.num_classes), VAL_SEED)
    test = make_clips(clip_cfg, args.test_clips, TEST_SEED)
    print(f"clips: {len(train)} train / {len(val)} val / {len(test)} test, "
          f"{clip_cfg.frames} frames of {clip_cfg.size} px, {clip_cfg.num_classes} motions", flush=True)
    teacher_cfg = DistillConfig(epochs=args.teacher_epochs, lr=5e-4)
    device = default_device()
    teacher, teacher_cvae = cached_teacher(train, clip_cfg.num_classes, teacher_cfg, device)
    student = action_student(clip_cfg.num_classes)
    cost = {"teacher": (count_params(teacher), count_macs(teacher, clip_cfg.frames, clip_cfg.size)),
            "student": (count_params(student), count_macs(student, clip_cfg.frames, clip_cfg.size)),
            "teacher_top1": accuracy(teacher, test, device), "teacher_val": accuracy(teacher, val, device)}
    print(f"teacher: test top-1 {100 * cost['teacher_top1']:.1f} %  ({time.time() - t0:.0f} s)", flush=True)
    targets = teacher_targets(teacher, train.videos, device)
    cvae_state = {k: v.detach().cpu().clone() for k, v in teacher_cvae.state_dict().items()}
    jobs = [DistillJob(m, train, clip_cfg.num_classes,
                       DistillConfig(epochs=args.epochs, lr=1e-3, seed=seed),
                       None if m == "none" else targets, cvae_state if m == "genkd" or m in ABLATIONS else None)
            for seed in range(args.seeds) for m in args.methods]
    rows = []

    def done(job: DistillJob, res) -> None:
        if res is None:
            print(f"error: the {job.method} student of seed {job.cfg.seed} failed", file=sys.stderr)
            return
        student = action_student(clip_cfg.num_classes)
        student.load_state_dict(res[0])
        rows.append({"method": job.method, "seed": job.cfg.seed, "test_top1": accuracy(student, test),
                     "val_top1": accuracy(student, val), "final_loss": res[1].losses[-1],
                     **{f"cfg_{k}": v for k, v in dataclasses.asdict(job.cfg).items()}})
        write_parquet(pd.DataFrame(rows), os.path.join(args.out, "results.parquet"))

    run_jobs(jobs, args, done, device)
    df = pd.DataFrame(rows)
    if df.empty:
        print("error: every student failed", file=sys.stderr)
        return 1
    plot(df, cost["teacher_top1"], os.path.join(args.out, "top1.png"))
    report = results_markdown(df, cost, clip_cfg, args, time.time() - t0)
    for path in filter(None, (os.path.join(args.out, "results.md"), args.report)):
        write_atomic(path, report)
    print(f"\naction recognition, top-1 over {args.seeds} seed(s) ({time.time() - t0:.0f} s):")
    print(table(df, cost))
    print(f"\nresults in {args.out}: results.parquet, results.md, top1.png")
    return 0 if len(rows) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
