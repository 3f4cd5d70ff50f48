"""Weakly supervised temporal action localization: ours vs W-TALC and BaS-Net styles.

Trains each method from video-level labels on synthetic untrimmed videos and
prints the THUMOS-style table (mAP at tIoU 0.1..0.7 and their average, mean
and std over seeds); writes results.parquet and a PNG of one test video
(ground truth, change points, attention, detections).

    python experiments/wtal.py [--seeds 3] [--out runs/wtal]
    python experiments/wtal.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd
import torch

from driftlab.platform.metrics import THUMOS_TIOUS, detection_map
from driftlab.platform.wtal import ChangePointDetector
from driftlab.platform.wtal.data import UntrimmedConfig, make_videos, segments_frame
from driftlab.platform.wtal.models import METHODS, TrainConfig, localize, train


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train-videos", type=int, default=200)
    p.add_argument("--test-videos", type=int, default=100)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="a tiny run for tests")
    p.add_argument("--out", default="runs/wtal")
    return p.parse_args(argv)


def run_seed(seed: int, world: UntrimmedConfig, n_train: int, n_test: int, tcfg: TrainConfig):
    train_set = make_videos(world, n_train, seed=100 + seed, prefix="train")
    test_set = make_videos(world, n_test, seed=200 + seed, prefix="test")
    detector = ChangePointDetector(levels=4, latent_dim=16, threshold=1.5).fit(
        [v.features for v in train_set])
    gt = segments_frame(test_set)
    rows, models = [], {}
    for method in METHODS:
        model = train("basnet" if method == "ours" else method, train_set,
                      TrainConfig(**{**tcfg.__dict__, "seed": seed}))
        models[method] = model
        preds = pd.DataFrame([(v.name, c, float(s), float(e), sc) for v in test_set
                              for c, s, e, sc in localize(method, model, v, detector)],
                             columns=["video", "label", "t_start", "t_end", "score"])
        maps = detection_map(gt, preds, THUMOS_TIOUS)
        rows.append({"method": method, "seed": seed,
                     **{f"mAP@{t:.1f}": float(m) for t, m in zip(THUMOS_TIOUS, maps)},
                     "avg": float(maps.mean())})
    return rows, (test_set[0], models, detector)


def table(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if c.startswith("mAP@")] + ["avg"]
    lines = ["method   " + " ".join(f"{c[4:]:>11}" if c != "avg" else f"{'AVG':>11}" for c in cols)]
    for method, g in df.groupby("method", sort=False):
        cells = [f"{100 * g[c].mean():5.1f}±{100 * g[c].std(ddof=0):4.1f}" for c in cols]
        lines.append(f"{method:<8} " + " ".join(f"{x:>11}" for x in cells))
    return "\n".join(lines)


def plot(example, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from driftlab.platform.wtal.models import activations

    video, models, detector = example
    fig, axes = plt.subplots(len(models) + 1, 1, figsize=(10, 1.6 * (len(models) + 1)), sharex=True)
    T = len(video.features)
    for c, s, e in video.segments:
        axes[0].axvspan(s, e, color=f"C{c}", alpha=0.5)
    for w, points in detector.detect(video.features).items():
        axes[0].vlines(points, 0, 1, colors="k", alpha=0.3 + 0.15 * np.log2(w), lw=0.8)
    axes[0].set(ylabel="truth / cps", yticks=[], xlim=(0, T))
    for ax, (method, model) in zip(axes[1:], models.items()):
        _, att, _ = activations(model, video)
        ax.plot(att, "k", lw=0.8)
        for c, s, e, sc in sorted(localize(method, model, video, detector), key=lambda d: -d[3])[:6]:
            ax.axvspan(s, e, ymin=0, ymax=0.3, color=f"C{c}", alpha=0.6)
        ax.set(ylabel=method, ylim=(0, 1.05))
    axes[-1].set_xlabel("snippet")
    fig.suptitle(f"{video.name}: ground truth and change points; attention and top detections")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    world = UntrimmedConfig()
    tcfg = TrainConfig(epochs=args.epochs)
    n_train, n_test, seeds = args.train_videos, args.test_videos, args.seeds
    if args.quick:
        world = UntrimmedConfig(min_len=120, max_len=200)
        tcfg, n_train, n_test, seeds = TrainConfig(epochs=8), 40, 20, 2
    os.makedirs(args.out, exist_ok=True)
    rows, example, t0 = [], None, time.time()
    for seed in range(seeds):
        seed_rows, ex = run_seed(seed, world, n_train, n_test, tcfg)
        rows += seed_rows
        example = example or ex
        print(f"seed {seed}: " + ", ".join(f"{r['method']} {100 * r['avg']:.1f}" for r in seed_rows)
              + f"  ({time.time() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    df.to_parquet(os.path.join(args.out, "results.parquet"), index=False)
    plot(example, os.path.join(args.out, "example.png"))
    print("\nmAP (%) at tIoU, mean ± std over " + f"{seeds} seeds:\n" + table(df))
    print(f"\nresults in {args.out}: results.parquet, example.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
