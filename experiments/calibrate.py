"""Measure the virtual clock's costs for your models on this machine.

The simulation charges teacher labelling and student training to a virtual
clock (``costs:`` in the config), so results do not depend on how loaded the
machine running it is. This measures those costs for the configured teacher
and student, at their input size, on this machine's accelerator (the GPU when
there is one, else the CPU), and writes a ``costs:`` block:

    python experiments/calibrate.py --config my_fleet.yaml                 # print the block
    python experiments/calibrate.py --config my_fleet.yaml --out cal.yaml  # the config with it
    python experiments/drift_sim.py --config cal.yaml

Run it on the kind of server the fleet's retraining would use. Student
inference per frame is printed too: it is the camera's own cost (a camera
keeps up when it is below ``1 / world.fps``), not charged to the server.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import yaml

from driftlab.platform.config import ConfigError, SimConfig, config_to_dict, load_config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML config naming the teacher and student (default: the built-in ones)")
    p.add_argument("--out", help="write the config with the measured costs here (default: print the block)")
    p.add_argument("--frames", type=int, default=64, help="frames per timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (the fastest counts)")
    return p.parse_args(argv)


def _best(fn, repeats: int) -> float:
    fn()   # warm-up: allocator, cuDNN autotuning, lazy modules
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(cfg: SimConfig, frames: int = 64, repeats: int = 3, log=print) -> dict[str, float]:
    """Seconds per frame of student inference and teacher labelling, and per
    sample-epoch of student training, for ``cfg``'s models on this machine."""
    import numpy as np
    import torch

    from driftlab.platform.models import build_student, build_teacher, default_device, load_teacher_weights, logits
    from driftlab.platform.runner import set_determinism
    from driftlab.platform.training import TrainSpec, fit

    set_determinism()
    device = default_device()
    images = np.random.default_rng(0).integers(0, 256, (frames, cfg.frame_size, cfg.frame_size, 3), np.uint8)
    teacher = load_teacher_weights(cfg.teacher, cfg.num_classes) if cfg.teacher.weights else \
        build_teacher(cfg.teacher, cfg.num_classes)
    teacher = teacher.to(device).eval()
    student = build_student(cfg.student, cfg.num_classes).to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            fn()
            sync()
        return _best(run, repeats)

    log(f"measuring on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
        f"{cfg.frame_size} px frames ...")
    infer = timed(lambda: logits(student, images, device=device)) / frames
    label = timed(lambda: logits(teacher, images, device=device)) / frames
    labels = np.arange(frames) % cfg.num_classes
    train = timed(lambda: fit(build_student(cfg.student, cfg.num_classes).to(device), images, labels,
                              TrainSpec(epochs=1, batch_size=32), device=device)) / frames
    return {"device": str(device), "infer_s_per_frame": infer, "label_s_per_frame": label,
            "train_s_per_sample_epoch": train}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config) if args.config else SimConfig()
        if args.frames < 2 or args.repeats < 1:
            raise ConfigError("--frames must be at least 2 and --repeats at least 1")
        if args.out and os.path.isdir(args.out):
            raise ConfigError(f"--out {args.out} is a directory; give a file name")
        m = measure(cfg, args.frames, args.repeats)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    costs = {"label_s_per_frame": float(f"{m['label_s_per_frame']:.3g}"),
             "train_s_per_sample_epoch": float(f"{m['train_s_per_sample_epoch']:.3g}"),
             "downlink_s_per_mparam": cfg.costs.downlink_s_per_mparam,
             "genkd_factor": cfg.costs.genkd_factor}
    note = (f"# measured by experiments/calibrate.py on {m['device']}: {cfg.teacher.arch} teacher, "
            f"{cfg.student.arch} student, {cfg.frame_size} px\n"
            f"# student inference on this device: {1000 * m['infer_s_per_frame']:.2f} ms per frame "
            f"(the camera's own cost, not charged to the server)\n"
            f"# downlink_s_per_mparam and genkd_factor are kept from the config (not measured)\n")
    if args.out:
        values = config_to_dict(cfg)
        values["costs"] = costs
        with open(args.out, "w") as f:
            f.write(note)
            yaml.safe_dump(values, f, sort_keys=False)
        print(f"wrote {args.out}")
    print(note + yaml.safe_dump({"costs": costs}, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
