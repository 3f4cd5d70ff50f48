"""Train (or load from the cache) the teacher, and report how good it and the
initial students are, condition by condition.

    python experiments/train_teacher.py                  # teacher report + student drift report
    python experiments/train_teacher.py --save teacher.pt  # also export the checkpoint

The teacher is trained on every named condition of the world, on cameras the
simulation never uses, and its held-out accuracy is measured on other unseen
cameras. A student trained on one camera's clear day is then measured on every
condition of that camera: its accuracy before and after drift.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from driftlab.platform.config import SimConfig
from driftlab.platform.models import architectures, build_student
from driftlab.platform.runner import set_determinism
from driftlab.platform.training import TrainSpec, evaluate, fit
from driftlab.platform.world import CONDITIONS, render_condition_set
from driftlab.platform.pretrained import HELDOUT_SEED, load_teacher, teacher_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=architectures(), metavar="ARCH",
                   help="a torchvision classification architecture")
    p.add_argument("--save", help="also write the teacher checkpoint here")
    args = p.parse_args(argv)
    set_determinism()
    world = SimConfig().world
    teacher = load_teacher(world, args.arch)
    report = teacher_report(teacher, world)
    names = list(CONDITIONS)
    print("\nteacher held-out accuracy per condition (%):")
    print("  " + "  ".join(f"{n:>10}" for n in names))
    print("  " + "  ".join(f"{100 * report[n]:>10.1f}" for n in names))

    # A student fit to one camera's clear day, measured on that camera's conditions.
    seed = HELDOUT_SEED + 7
    # Objects 200..599 of the camera's day for training; the test uses objects 0..59.
    past = render_condition_set(world, ["day"] * 3, 200, seed)
    past.images, past.labels = past.images[200:], past.labels[200:]
    test = render_condition_set(world, names, 60, seed)
    test_images = test.images.reshape(len(names), 60, *test.images.shape[1:])
    test_labels = test.labels.reshape(len(names), 60)
    student = build_student(SimConfig().student, world.num_classes)
    fit(student, past.images, past.labels, TrainSpec(epochs=6))
    accs = [evaluate(student, test_images[k], test_labels[k])[0] for k in range(len(names))]
    print("\ninitial student (trained on its camera's day only) accuracy per condition (%):")
    print("  " + "  ".join(f"{n:>10}" for n in names))
    print("  " + "  ".join(f"{100 * a:>10.1f}" for a in accs))
    print(f"  before drift (day) {100 * accs[0]:.1f}; after drift, mean of the others "
          f"{100 * float(np.mean(accs[1:])):.1f}")
    if args.save:
        torch.save(teacher.state_dict(), args.save)
        print(f"\nteacher checkpoint written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
