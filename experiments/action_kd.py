"""Generative feature distillation for action recognition (seed 2) vs baselines.

Trains (or loads from the cache) the action teacher with its CVAE, then a
student from scratch per method and seed: no KD, Hinton logit KD, FitNets
hint, attention transfer, and ours (generative + attention distillation);
``--methods`` also takes ours without a part (``genkd-gen``, ``genkd-att``).
By default every method runs with its paper's weights; ``--search N`` first
picks each method's distillation weights on the validation split, N Ray Tune
trials per method (the paper's weights, then random draws from
``SEARCH_SPACE``; one student seed kept apart from the evaluation seeds),
and ``--hparams FILE`` reuses such a choice.
Prints top-1 on the test split (mean ± sample std over seeds) with parameters
and multiply-accumulates per clip, and each method's paired difference per
seed against no KD and against Hinton KD; writes results.parquet, top1.png
and results.md (the table with its command and commit; ``--report FILE``
writes it there too, e.g. into docs/results/), and with ``--search``
search.parquet (every trial) and hparams.yaml (the choice).

    python experiments/action_kd.py [--seeds 5] [--out runs/action_kd]
    python experiments/action_kd.py --search 3     # weights chosen on validation first
    python experiments/action_kd.py --hparams runs/action_kd/hparams.yaml
    python experiments/action_kd.py --ray          # students as Ray Train jobs
    python experiments/action_kd.py --quick
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from functools import partial
from typing import Callable

import pandas as pd
import torch
import yaml

from driftlab.platform.distill import (ABLATIONS, METHODS, SEARCH_SPACE, ClipConfig, Clips, DistillConfig,
                                       DistillJob, accuracy, action_student, base_method, cached_teacher,
                                       count_macs, count_params, make_clips, teacher_targets)
from driftlab.platform.metrics import write_atomic, write_parquet
from driftlab.platform.models import default_device
from driftlab.platform.runner import set_determinism

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3
TEACHER_LR = 1e-3   # the students keep DistillConfig's 2e-3
SEARCH_STUDENT_SEED = 100
"""The student seed of every search trial, apart from the evaluation seeds 0, 1, ..."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="student seeds per method")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: "
                   + ", ".join((*METHODS, *ABLATIONS)))
    p.add_argument("--train-clips", type=int, default=2800, help="the teacher's training clips")
    p.add_argument("--student-clips", type=int, default=None,
                   help="the students' training clips: the first ones of the teacher's (default: all)")
    p.add_argument("--test-clips", type=int, default=700)
    p.add_argument("--epochs", type=int, default=8, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=14)
    p.add_argument("--search", type=int, default=0, metavar="N",
                   help="first choose each method's weights on validation: N Ray Tune trials per method")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--hparams", default=None, help="YAML of each method's weights (what --search writes)")
    p.add_argument("--ray", action="store_true", help="run the students as Ray Train jobs")
    p.add_argument("--address", default=None, help="Ray cluster to join (with --ray or --search)")
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
    args.student_clips = args.train_clips if args.student_clips is None else args.student_clips
    counts = (args.seeds, args.train_clips, args.student_clips, args.test_clips, args.epochs, args.teacher_epochs)
    if min(counts) < 1:
        p.error("--seeds, the clip counts and the epochs must be >= 1")
    if args.student_clips > args.train_clips:
        p.error(f"--student-clips {args.student_clips} is more than --train-clips {args.train_clips}")
    if args.search < 0 or (args.search and args.hparams):
        p.error("--search takes a trial count >= 0, and not with --hparams")
    args.chosen = {}
    if args.hparams:
        try:
            args.chosen = load_hparams(args.hparams)
        except (OSError, ValueError, yaml.YAMLError) as e:
            p.error(f"--hparams {args.hparams}: {e}")
    return args


def load_hparams(path: str) -> dict[str, dict]:
    """``{method: {DistillConfig field: value}}`` from YAML; ValueError names
    an unknown method or a field its search space does not have."""
    with open(path) as f:
        chosen = yaml.safe_load(f) or {}
    if not isinstance(chosen, dict):
        raise ValueError("expected a mapping of method -> {weight: value}")
    for method, params in chosen.items():
        if method not in SEARCH_SPACE:
            raise ValueError(f"unknown method {method!r}; choose from: {', '.join(SEARCH_SPACE)}")
        if not isinstance(params, dict):
            raise ValueError(f"{method}: expected a mapping of weight -> value, got {params!r}")
        unknown = sorted(set(params) - set(SEARCH_SPACE[method]))
        if unknown:
            raise ValueError(f"{method} has no weight {', '.join(unknown)}; it has: "
                             f"{', '.join(SEARCH_SPACE[method]) or 'none'}")
        bad = [k for k, v in params.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ValueError(f"{method}: {', '.join(bad)}: expected a number")
        try:
            DistillConfig(**params)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
    return chosen


def _student_config(method: str, args, seed: int, chosen: dict[str, dict]) -> DistillConfig:
    """The paper's weights, overridden by what was chosen for the method (an
    ablation takes what genkd's search chose)."""
    return DistillConfig(epochs=args.epochs, seed=seed, **chosen.get(base_method(method), {}))


def _job(method: str, cfg: DistillConfig, train, num_classes: int, targets, cvae_state) -> DistillJob:
    return DistillJob(method, train, num_classes, cfg, None if method == "none" else targets,
                      cvae_state if base_method(method) == "genkd" else None)


def _search_trial(config: dict, train, val, num_classes, targets, cvae_state, base: DistillConfig,
                  threads: int) -> None:
    """One Tune trial: a student with ``config``'s weights, scored on validation."""
    from ray import tune

    set_determinism(threads)
    params = {k: v for k, v in config.items() if k != "method"}
    job = _job(config["method"], dataclasses.replace(base, **params), train, num_classes, targets, cvae_state)
    state, _ = job.run(log=lambda m: print(f"  {m}", flush=True))
    student = action_student(num_classes)
    student.load_state_dict(state)
    tune.report({"val_top1": accuracy(student, val)})


def search(args, train, val, num_classes: int, targets, cvae_state) -> dict[str, dict]:
    """Each method's weights with the best validation top-1 over ``args.search``
    trials, the same count for every method: the paper's weights first, then
    random draws from :data:`SEARCH_SPACE` (ties go to the earlier trial).
    Writes search.parquet and hparams.yaml into ``args.out``."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tune_drift import _plain, tune_space  # this script's folder is on sys.path

    methods = [m for m in dict.fromkeys(base_method(m) for m in args.methods) if SEARCH_SPACE[m]]
    if not methods:
        print("search: none of the methods has a weight to search", flush=True)
        return {}
    concurrency = max(1, (os.cpu_count() or 1) // 2) if not args.address else 4
    cpus = (os.cpu_count() or 1) / concurrency if not args.address else 2
    start_ray(args)
    base = DistillConfig(epochs=args.epochs, seed=SEARCH_STUDENT_SEED)
    trainable = tune.with_resources(tune.with_parameters(
        _search_trial, train=train, val=val, num_classes=num_classes, targets=targets, cvae_state=cvae_state,
        base=base, threads=max(1, int(cpus))), {"cpu": cpus})
    rows, chosen = [], {}

    def paper(method: str) -> dict:   # the first trial, so the search cannot end below the paper on validation
        return {k: getattr(base, k) for k in SEARCH_SPACE[method]}

    try:
        for method in methods:
            print(f"search: {args.search} trials of {method} on the validation split", flush=True)
            tuner = tune.Tuner(
                trainable, param_space={"method": method, **tune_space(SEARCH_SPACE[method])},
                tune_config=tune.TuneConfig(metric="val_top1", mode="max", num_samples=args.search,
                                            search_alg=BasicVariantGenerator(
                                                points_to_evaluate=[paper(method)], random_state=args.search_seed,
                                                max_concurrent=concurrency)),
                run_config=tune.RunConfig(name=f"action-kd-{method}",
                                          storage_path=os.path.abspath(os.path.join(args.out, "search")),
                                          verbose=0))
            trials = [{"method": method, "trial": i, "val_top1": r.metrics["val_top1"],
                       **{k: v for k, v in r.config.items() if k != "method"}}
                      for i, r in enumerate(tuner.fit()) if r.metrics and "val_top1" in r.metrics]
            if not trials:
                raise RuntimeError(f"no search trial of {method} finished")
            best = max(trials, key=lambda t: (t["val_top1"], -t["trial"]))
            chosen[method] = {k: _plain(best[k]) for k in SEARCH_SPACE[method]}
            print(f"search: {method} chose {chosen[method]} (val top-1 {100 * best['val_top1']:.1f} %)", flush=True)
            rows += trials
    finally:
        ray.shutdown()
    write_parquet(pd.DataFrame(rows), os.path.join(args.out, "search.parquet"))
    write_atomic(os.path.join(args.out, "hparams.yaml"), yaml.safe_dump(chosen, sort_keys=False))
    return chosen


def start_ray(args) -> None:
    """Join ``--address`` or start an embedded Ray (no usage stats), for the
    search and for ``--ray``."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=args.address, num_cpus=None if args.address else max(os.cpu_count() or 1, 2),
             configure_logging=True, logging_level="warning")


def run_jobs(jobs: list[DistillJob], args, done: Callable[[DistillJob, tuple | None], None],
             device: torch.device | str = "cpu", log=partial(print, flush=True)) -> None:
    """Run the students inline on ``device`` (``done`` after each) or as Ray
    Train jobs (one fit() for all, ``done`` for each once the batch is back)."""
    if not args.ray:
        for i, job in enumerate(jobs):
            t0 = time.time()
            done(job, job.run(device, log=lambda m: log(f"  {m}")))
            log(f"[{i + 1}/{len(jobs)}] {job.method} seed {job.cfg.seed}: {time.time() - t0:.0f} s")
        return
    import ray

    from driftlab.actors.trainer import TrainPool

    start_ray(args)
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


def results_markdown(df: pd.DataFrame, cost: dict, clip_cfg: ClipConfig, args, wall_s: float,
                     chosen: dict[str, dict]) -> str:
    """The table with what made it: command, commit (read at the start), date, clips, epochs."""
    import datetime

    own = f" (students: the first {args.student_clips})" if args.student_clips < args.train_clips else ""
    return (f"# Action students by distillation method (seed 2)\n\n"
            f"Generated by `python experiments/action_kd.py {' '.join(args.argv)}` at commit "
            f"{args.commit}, {datetime.date.today()}, {os.cpu_count()} cores, {wall_s:.0f} s; do not edit "
            f"by hand. {args.train_clips} training clips{own} ({clip_cfg.frames} frames of {clip_cfg.size} px, "
            f"{clip_cfg.num_classes} classes), teacher {args.teacher_epochs} epochs at lr {TEACHER_LR:g} and students "
            f"{args.epochs} at lr {DistillConfig.lr:g}, "
            f"seeds 0-{args.seeds - 1}; mean ± sample std over seeds, differences paired by seed.\n\n"
            + table(df, cost) + "\n\n" + weights_note(args, chosen) + "\n")


def weights_note(args, chosen: dict[str, dict]) -> str:
    """Which distillation weights the students used, and where they came from."""
    if not chosen:
        return "Weights: each method's paper's (the `DistillConfig` defaults)."
    how = (f"chosen on the validation split by `--search {args.search}` ({args.search} trials per method: "
           f"the paper's weights, then random draws; student seed {SEARCH_STUDENT_SEED}; search.parquet)"
           if args.search else f"from `--hparams {args.hparams}`")
    lines = [f"Weights {how}; the rest are the papers':", ""]
    lines += [f"- {m}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())
              for m, p in chosen.items()]
    return "\n".join(lines)


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
    from drift_sim import current_commit  # this script's folder is on sys.path

    args.commit = current_commit()   # what the run starts from, whatever is committed while it runs
    set_determinism()
    os.makedirs(args.out, exist_ok=True)
    clip_cfg = ClipConfig()
    t0 = time.time()
    train = make_clips(clip_cfg, args.train_clips, TRAIN_SEED)
    student_train = Clips(train.videos[:args.student_clips], train.labels[:args.student_clips])  # classes cycle
    val = make_clips(clip_cfg, max(args.test_clips // 2, clip_cfg.num_classes), VAL_SEED)
    test = make_clips(clip_cfg, args.test_clips, TEST_SEED)
    among = f" (the students' {len(student_train)} among them)" if len(student_train) < len(train) else ""
    print(f"clips: {len(train)} train{among} / {len(val)} val / {len(test)} test, "
          f"{clip_cfg.frames} frames of {clip_cfg.size} px, {clip_cfg.num_classes} motions", flush=True)
    teacher_cfg = DistillConfig(epochs=args.teacher_epochs, lr=TEACHER_LR)
    device = default_device()
    teacher, teacher_cvae = cached_teacher(train, clip_cfg.num_classes, teacher_cfg, device)
    student = action_student(clip_cfg.num_classes)
    cost = {"teacher": (count_params(teacher), count_macs(teacher, clip_cfg.frames, clip_cfg.size)),
            "student": (count_params(student), count_macs(student, clip_cfg.frames, clip_cfg.size)),
            "teacher_top1": accuracy(teacher, test, device), "teacher_val": accuracy(teacher, val, device)}
    print(f"teacher: test top-1 {100 * cost['teacher_top1']:.1f} %  ({time.time() - t0:.0f} s)", flush=True)
    targets = teacher_targets(teacher, student_train.videos, device)
    cvae_state = {k: v.detach().cpu().clone() for k, v in teacher_cvae.state_dict().items()}
    try:
        chosen = (search(args, student_train, val, clip_cfg.num_classes, targets, cvae_state) if args.search
                  else args.chosen)
    except RuntimeError as e:   # no trial of a method finished
        print(f"error: {e}", file=sys.stderr)
        return 1
    jobs = [_job(m, _student_config(m, args, seed, chosen), student_train, clip_cfg.num_classes, targets,
                 cvae_state)
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
        print(f"  {job.method} seed {job.cfg.seed}: test top-1 {100 * rows[-1]['test_top1']:.1f} %", flush=True)

    run_jobs(jobs, args, done, device)
    df = pd.DataFrame(rows)
    if df.empty:
        print("error: every student failed", file=sys.stderr)
        return 1
    plot(df, cost["teacher_top1"], os.path.join(args.out, "top1.png"))
    report = results_markdown(df, cost, clip_cfg, args, time.time() - t0, chosen)
    for path in filter(None, (os.path.join(args.out, "results.md"), args.report)):
        write_atomic(path, report)
    print(f"\naction recognition, top-1 over {args.seeds} seed(s) ({time.time() - t0:.0f} s):")
    print(table(df, cost))
    print(f"\nresults in {args.out}: results.parquet, results.md, top1.png")
    return 0 if len(rows) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
