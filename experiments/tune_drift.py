"""Tune EdgeSync's filter and schedule with Ray Tune across drift scenarios.

Each trial runs whole simulations (inline runner, in the trial's process) on
every search scenario and seed in lockstep and reports the mean accuracy so
far after each window, so ASHA stops bad trials early. The default searcher
is Bayesian optimisation (Optuna's TPE, as EdgeSync tunes its manager
offline); ``--searcher random`` is plain random search. The best
configuration is then checked against the defaults on held-out scenarios and
seeds, so overfitting the search set shows. ``--sweep`` instead runs every
strategy over fleet sizes and upload budgets (the EdgeSync paper's scaling
experiments).

    python experiments/tune_drift.py                      # a search of a few minutes
    python experiments/tune_drift.py --trials 32 --concurrency 4 --address auto
    python experiments/tune_drift.py --sweep --out runs/sweep
    python experiments/drift_sim.py --config runs/tune/best.yaml
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from ray import tune  # noqa: E402

from driftlab.platform.config import ConfigError, SimConfig, config_from_dict, load_config  # noqa: E402
from driftlab.platform.strategies import STRATEGIES, parse_strategies  # noqa: E402
from driftlab.platform.tuning import SEARCH_SPACE, accuracy_by_window, nest, with_params  # noqa: E402
from driftlab.platform.world import SCENARIOS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML of SimConfig fields every simulation starts from")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--scenarios", default="day_night,weather", help="search scenarios")
    p.add_argument("--seeds", default="0", help="search seeds")
    p.add_argument("--heldout-scenarios", default="scene_change,mixed")
    p.add_argument("--heldout-seeds", default="1")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--duration", type=float, default=300.0, help="stream seconds per simulation")
    p.add_argument("--searcher", choices=("bo", "random"), default="bo",
                   help="bo: Bayesian optimisation (Optuna TPE); random: random search")
    p.add_argument("--concurrency", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                   help="trials at once (each trial uses 2 threads, as drift_sim.py does, "
                        "so its numbers repeat there)")
    p.add_argument("--address", help="join this Ray cluster (default: an embedded local Ray)")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher")
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--sweep", action="store_true", help="scaling sweep instead of a search")
    p.add_argument("--sweep-cameras", default="2,4,8,16")
    p.add_argument("--sweep-fractions", default="0.02,0.05,0.1,0.2")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="strategies of the sweep")
    return p.parse_args(argv)


def _split(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def _base(args) -> SimConfig:
    base = load_config(args.config) if args.config else SimConfig()
    return config_from_dict({"cameras": args.cameras, "duration": args.duration,
                             "strategies": ["edgesync"]}, base)


def _pairs(base: SimConfig, scenarios: list[str], seeds: list[int]) -> list[SimConfig]:
    for s in scenarios:
        if s not in SCENARIOS:
            raise ConfigError(f"unknown scenario {s!r}; choose from: {', '.join(SCENARIOS)}")
    return [config_from_dict({"scenario": s, "seed": seed}, base) for s in scenarios for seed in seeds]


def _warm(cfgs: list[SimConfig]) -> None:
    """Train and cache the teacher and every initial student once, here, so
    trials only load them."""
    from driftlab.platform.runner import build_fleet

    for cfg in cfgs:
        build_fleet(cfg, log=lambda *_: None)


def _resources(args) -> dict:
    """Logical CPUs per trial: the machine split ``--concurrency`` ways here,
    two per trial on a cluster."""
    return {"cpu": (os.cpu_count() or 1) / args.concurrency if not args.address else 2}


class _Progress(tune.Callback):
    """One line per finished trial (Tune's own tables are set quiet)."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if "accuracy" in r:
            print(f"  trial {trial.trial_id}: accuracy {r['accuracy']:.3f}"
                  + (f" after {r['window']} windows" if "window" in r else ""), flush=True)


def _search_trial(params: dict, cfgs: list[SimConfig]) -> None:
    """One Tune trial: the configuration on every search scenario, reported per window."""
    from driftlab.platform.runner import build_fleet, set_determinism

    set_determinism()  # the thread count of drift_sim.py: a trial's numbers repeat there
    cfgs = [with_params(c, params) for c in cfgs]
    fleets = [build_fleet(c, log=lambda *_: None) for c in cfgs]
    for window, acc in enumerate(accuracy_by_window(cfgs, fleets, every=cfgs[0].window), 1):
        tune.report({"accuracy": acc, "window": window})


def tune_space(space: dict[str, tuple]) -> dict:
    """Tune's sampling domains for a ``{name: (kind, *arguments)}`` space (the
    format of :data:`SEARCH_SPACE`)."""
    make = {"loguniform": tune.loguniform, "uniform": tune.uniform,
            "choice": lambda options: tune.choice(options)}
    return {name: make[kind](*spec) for name, (kind, *spec) in space.items()}


def search(args, base: SimConfig) -> int:
    from ray.tune.schedulers import ASHAScheduler

    search_cfgs = _pairs(base, _split(args.scenarios), _split(args.seeds, int))
    heldout_cfgs = _pairs(base, _split(args.heldout_scenarios), _split(args.heldout_seeds, int))
    os.makedirs(args.out, exist_ok=True)
    print(f"warming the model cache for {len(search_cfgs) + len(heldout_cfgs)} scenario/seed pairs ...",
          flush=True)
    _warm(search_cfgs + heldout_cfgs)
    windows = int(np.ceil(base.duration / base.window))
    if args.searcher == "bo":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = ConcurrencyLimiter(OptunaSearch(metric="accuracy", mode="max", seed=args.seed),
                                      max_concurrent=args.concurrency)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=args.seed, max_concurrent=args.concurrency)
    _init_ray(args)
    trainable = tune.with_resources(tune.with_parameters(_search_trial, cfgs=search_cfgs),
                                    _resources(args))
    tuner = tune.Tuner(
        trainable, param_space=tune_space(SEARCH_SPACE),
        tune_config=tune.TuneConfig(
            metric="accuracy", mode="max", num_samples=args.trials, search_alg=searcher,
            scheduler=ASHAScheduler(time_attr="window", max_t=windows,
                                    grace_period=max(1, windows // 2), reduction_factor=2)),
        run_config=tune.RunConfig(name="driftlab-tune", storage_path=os.path.abspath(args.out),
                                  verbose=0, callbacks=[_Progress()]))
    started = time.time()
    print(f"{args.trials} trials, {args.concurrency} at a time, on "
          f"{len(search_cfgs)} scenario/seed pair(s) ...", flush=True)
    grid = tuner.fit()
    trials = _trials_table(grid)
    trials.to_parquet(os.path.join(args.out, "trials.parquet"), index=False)
    full = trials[trials.window == windows]
    if full.empty:
        print("error: no trial completed every window", file=sys.stderr)
        return 1
    best = full.sort_values(["accuracy", "trial"], ascending=[False, True]).iloc[0]
    params = {k: _plain(best[f"config/{k}"]) for k in SEARCH_SPACE}
    best_path = os.path.join(args.out, "best.yaml")
    with open(best_path, "w") as f:
        yaml.safe_dump(nest(params), f, sort_keys=False)
    print(f"\n{len(trials)} trials in {time.time() - started:.0f} s ({args.searcher}); "
          f"{len(full)} ran every window; best search accuracy {best.accuracy:.3f} ({best.trial})")
    print(f"best config: {best_path}")
    report = _heldout_report(search_cfgs, heldout_cfgs, params)
    report.to_parquet(os.path.join(args.out, "heldout.parquet"), index=False)
    print("\n" + report.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    _plot_search(grid, trials, os.path.join(args.out, "search.png"))
    print(f"\nresults in {args.out}: trials.parquet, best.yaml, heldout.parquet, search.png")
    return 0


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _trials_table(grid) -> pd.DataFrame:
    """One row per trial: its last report and its configuration."""
    rows = []
    for i, result in enumerate(grid):
        if result.metrics is None or "accuracy" not in result.metrics:
            continue
        rows.append({"trial": f"t{i:03d}", "accuracy": result.metrics["accuracy"],
                     "window": result.metrics["window"],
                     **{f"config/{k}": _plain(v) for k, v in result.config.items()}})
    return pd.DataFrame(rows)


def _heldout_report(search_cfgs, heldout_cfgs, params) -> pd.DataFrame:
    """Default vs tuned EdgeSync on the search set and on held-out scenarios/seeds."""
    from driftlab.platform.runner import run_inline

    rows = []
    for group, cfgs in (("search", search_cfgs), ("held-out", heldout_cfgs)):
        for cfg in cfgs:
            acc = {name: float(run_inline(c, progress=False, log=lambda *_: None).accuracy.iloc[0])
                   for name, c in (("default", cfg), ("tuned", with_params(cfg, params)))}
            rows.append({"set": group, "scenario": cfg.scenario, "seed": cfg.seed, **acc,
                         "gain": acc["tuned"] - acc["default"]})
    df = pd.DataFrame(rows)
    means = df.groupby("set", sort=False)[["default", "tuned", "gain"]].mean().reset_index()
    means["scenario"], means["seed"] = "mean", -1
    return pd.concat([df, means[df.columns]], ignore_index=True)


def _plot_search(grid, trials: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for result in grid:
        df = result.metrics_dataframe
        if df is not None and "window" in df:
            a.plot(df["window"], df["accuracy"], alpha=0.6)
    a.set(xlabel="window", ylabel="mean accuracy so far", title="trials (ASHA stops the weak)")
    order = trials.sort_values("trial")
    b.scatter(range(len(order)), order.accuracy, c=order.window, cmap="viridis")
    b.plot(range(len(order)), np.maximum.accumulate(order.accuracy.to_numpy()), "k--",
           label="best so far")
    b.set(xlabel="trial", ylabel="last reported accuracy", title="search")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_trial(config: dict, base: SimConfig) -> None:
    """One grid point of the sweep: one strategy, one fleet size and budget."""
    from driftlab.platform.runner import run_inline

    point = config["point"]
    cfg = config_from_dict({"strategies": [config["strategy"]], "cameras": point["cameras"],
                            "upload_fraction": point["upload_fraction"]}, base)
    row = run_inline(cfg, progress=False, log=lambda *_: None).iloc[0]
    tune.report({k: _plain(row[k]) for k in ("accuracy", "drift_accuracy", "frames_uploaded",
                                               "train_gpu_s", "jobs")})


def sweep(args, base: SimConfig) -> int:
    """Every strategy over fleet sizes (budget fixed) and over upload budgets."""
    strategies = _split(args.strategies)
    parse_strategies(config_from_dict({"strategies": strategies}, base))  # unknown names: one ConfigError
    cams, fracs = _split(args.sweep_cameras, int), _split(args.sweep_fractions, float)
    points = ([{"axis": "cameras", "cameras": n, "upload_fraction": base.upload_fraction}
               for n in cams]
              + [{"axis": "upload_fraction", "cameras": base.cameras, "upload_fraction": f}
                 for f in fracs])
    os.makedirs(args.out, exist_ok=True)
    print(f"warming the model cache for fleets of {sorted({p['cameras'] for p in points})} cameras ...",
          flush=True)
    _warm([config_from_dict({"cameras": n}, base) for n in sorted({p["cameras"] for p in points})])
    _init_ray(args)
    space = {"strategy": tune.grid_search(strategies), "point": tune.grid_search(points)}
    trainable = tune.with_resources(tune.with_parameters(_sweep_trial, base=base), _resources(args))
    grid = tune.Tuner(trainable, param_space=space,
                      tune_config=tune.TuneConfig(max_concurrent_trials=args.concurrency),
                      run_config=tune.RunConfig(name="driftlab-sweep", verbose=0, callbacks=[_Progress()],
                                                storage_path=os.path.abspath(args.out))).fit()
    rows = [{"strategy": r.config["strategy"], **r.config["point"], **r.metrics} for r in grid
            if r.metrics and "accuracy" in r.metrics]
    df = pd.DataFrame(rows)[["strategy", "axis", "cameras", "upload_fraction", "accuracy",
                             "drift_accuracy", "frames_uploaded", "train_gpu_s", "jobs"]]
    df = df.sort_values(["axis", "strategy", "cameras", "upload_fraction"])
    df.to_parquet(os.path.join(args.out, "sweep.parquet"), index=False)
    for axis in ("cameras", "upload_fraction"):
        table = df[df.axis == axis].pivot(index=axis, columns="strategy", values="accuracy")
        print(f"\naccuracy vs {axis} ({base.scenario}, {base.duration:.0f} s):")
        print(table.to_string(float_format=lambda v: f"{100 * v:.1f}"))
        _plot_sweep(df[df.axis == axis], axis, os.path.join(args.out, f"sweep_{axis}.png"))
    print(f"\nresults in {args.out}: sweep.parquet, sweep_cameras.png, sweep_upload_fraction.png")
    return 0


def _plot_sweep(df: pd.DataFrame, axis: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in df.groupby("strategy"):
        g = g.sort_values(axis)
        ax.plot(g[axis], 100 * g.accuracy, marker="o", label=name)
    ax.set(xlabel="cameras sharing the server" if axis == "cameras" else "share of frames uploaded",
           ylabel="accuracy %")
    if axis == "cameras":
        ax.set_xscale("log", base=2)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _init_ray(args) -> None:
    import ray

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 configure_logging=True, logging_level="warning")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.trials < 1 or args.concurrency < 1:
            raise ConfigError("--trials and --concurrency must be at least 1")
        base = _base(args)
        return sweep(args, base) if args.sweep else search(args, base)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
