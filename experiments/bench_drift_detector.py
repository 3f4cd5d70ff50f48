"""How well the ``+cp`` cameras' drift detector finds the world's condition changes.

Plays every named scenario's camera streams (no models: confidence held at
1) through :class:`~driftlab.platform.drift.DriftDetector` tick by tick and
counts, against the scenarios' known transitions (each blends over
``transition`` of the run): transitions found (a change point from 10 s before
the blend starts to 10 s after it ends), missed, false alarms, and how long
after the blend starts the detector reports it.

    python experiments/bench_drift_detector.py [--threshold 5] [--cameras 4] [--seed 0]
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from driftlab.platform.config import SimConfig
from driftlab.platform.drift import DriftDetector
from driftlab.platform.world import SCENARIOS, CameraStream


def play(src: CameraStream, det: DriftDetector, tick: float) -> None:
    pos = 0
    for k in range(int(np.ceil(src.duration / tick))):
        until = (k + 1) * tick
        stop = min(int(np.ceil(until * src.fps - 1e-9)), src.num_frames)
        batch = src.frames(pos, stop)
        pos = stop
        det.observe(batch.times, batch.images, np.ones(len(batch.times)), until)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threshold", type=float, default=None, help="override changepoint.threshold")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = SimConfig(cameras=args.cameras, seed=args.seed)
    params = cfg.changepoint if args.threshold is None else dataclasses.replace(
        cfg.changepoint, threshold=args.threshold)
    print(f"{'scenario':<13} {'transitions':>11} {'found':>6} {'missed':>7} {'false':>6} {'delay s (median)':>17}")
    for name, scenario in SCENARIOS.items():
        found = missed = false = 0
        delays = []
        for cam in range(cfg.cameras):
            src = CameraStream(cfg.world, scenario, cam, cfg.cameras, cfg.seed, cfg.duration)
            det = DriftDetector(params)
            play(src, det, cfg.tick)
            blend = scenario.transition * cfg.duration
            used = set()
            for u, _ in scenario.keyframes[1:]:
                end = (u + src.phase) * cfg.duration
                start = end - blend
                if start >= cfg.duration - 20:
                    continue  # too close to the end to be seen
                near = [i for i, c in enumerate(det.changes) if start - 10 <= c <= end + 10]
                if near:
                    found += 1
                    used.update(near)
                    delays.append(min(det.detected_at[i] for i in near) - start)
                else:
                    missed += 1
            false += len(det.changes) - len(used)
        median = f"{np.median(delays):.0f}" if delays else "-"
        print(f"{name:<13} {found + missed:>11} {found:>6} {missed:>7} {false:>6} {median:>17}")


if __name__ == "__main__":
    main()
