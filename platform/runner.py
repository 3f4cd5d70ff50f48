"""The inline runner: every strategy of a config, one process, same streams.

Builds the fleet once (sources, the cached teacher, each camera's initial
student), runs each strategy's :class:`~driftlab.platform.sim.Simulation`
and streams the results into a :class:`ResultSink`. The Ray runner
(:mod:`driftlab.actors.runner`) shares all of it but where the parts run.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pandas as pd
import torch
import yaml

from .config import SimConfig, config_to_dict
from .metrics import ResultSink, plot_accuracy
from .models import default_device, predict
from .sim import Fleet, Simulation, inline_simulation
from .strategies import parse_strategies
from .world import CameraStream, VideoFileSource, get_scenario
from .zoo import (StudentJob, TrainStudents, initial_students, load_teacher, load_teacher_genkd,
                  teacher_checkpoint, teacher_genkd_checkpoint, train_students_here)

__all__ = ["build_fleet", "run_inline", "run_strategies", "set_determinism"]


def set_determinism(threads: int | None = None) -> None:
    """Fix torch's thread count so float results repeat run to run."""
    torch.set_num_threads(threads or min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_fleet(cfg: SimConfig, log: Callable[[str], None] = print,
                train_students: TrainStudents = train_students_here) -> Fleet:
    """The sources, the teacher and each camera's initial student (trained by
    ``train_students`` where not cached) a run's strategies all start from."""
    device = default_device()
    past = int(round(cfg.warmup * cfg.world.fps))
    if cfg.source:
        # Every camera plays the same file (one decode, shared read-only).
        # Opened first: a bad file fails before any model is trained.
        sources = [VideoFileSource(cfg.source, cfg.world.size, cfg.source_labels)] * cfg.cameras
        keys = [(os.path.abspath(cfg.source), os.path.getmtime(cfg.source), cfg.source_labels)] * cfg.cameras
        past = min(past, max(8, sources[0].num_frames // 5))
    else:
        scenario = get_scenario(cfg.scenario)
        sources = [CameraStream(cfg.world, scenario, i, cfg.cameras, cfg.seed, cfg.duration)
                   for i in range(cfg.cameras)]
        # A camera's past holds its scenario's first condition whatever the
        # fleet's size (the scenario is held constant before t=0).
        keys = [(str(cfg.world), cfg.scenario, cfg.seed, i) for i in range(cfg.cameras)]
    teacher = load_teacher(cfg.world, cfg.teacher, cfg.teacher_checkpoint, device, log)
    jobs = [StudentJob(src, cfg.student, cfg.world.num_classes, past,
                       teacher=teacher.cpu() if cfg.source else None) for src in sources]
    students = initial_students(jobs, keys, train_students, device, log)
    teacher.to(device)
    truth = []
    for src in sources:
        labels = src.frames(0, src.num_frames).labels if cfg.source else None
        if labels is not None and (labels < 0).any():
            # No ground truth for these frames: the teacher's labels stand in.
            labels = labels.copy()
            labels[labels < 0] = predict(teacher, src.images[labels < 0], device=device)[0]
        truth.append(labels)
    fleet = Fleet(sources, students, teacher, device, truth)
    if cfg.distill == "genkd":   # the teacher's seed 2 head and CVAE
        checkpoint = teacher_checkpoint(cfg.world, cfg.teacher, cfg.teacher_checkpoint, log=log)
        fleet.genkd_checkpoint = teacher_genkd_checkpoint(cfg.world, teacher, checkpoint, device, log)
        fleet.teacher_head, fleet.teacher_cvae = load_teacher_genkd(fleet.genkd_checkpoint, device)
    return fleet


def run_inline(cfg: SimConfig, out_dir: str | None = None, progress: bool = True,
               log: Callable[[str], None] = print, fleet: Fleet | None = None) -> pd.DataFrame:
    """Run every strategy of ``cfg`` in this process; write results to ``out_dir``;
    return the summary."""
    strategies = parse_strategies(cfg)
    set_determinism()
    fleet = fleet or build_fleet(cfg, log)
    return run_strategies(cfg, [inline_simulation(cfg, s, fleet) for s in strategies], out_dir, progress, log)


def run_strategies(cfg: SimConfig, sims: list[Simulation], out_dir: str | None = None, progress: bool = True,
                   log: Callable[[str], None] = print,
                   after_tick: Callable[[str, int], None] | None = None, at_once: int = 1) -> pd.DataFrame:
    """Play the strategies' simulations, ``at_once`` at a time (inline one
    after another; on Ray each strategy's fleet at the same time), streaming
    their ticks into one :class:`ResultSink` that is flushed to Parquet every
    window; write the summary and the plot; return the summary. The results
    are the same whatever ``at_once`` is. ``after_tick(strategy, tick)`` runs
    after each tick (tests inject faults there)."""
    names = [sim.strategy.name for sim in sims]
    sink = ResultSink(out_dir, names)
    if out_dir:
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    window_ticks = max(1, int(round(cfg.window / cfg.tick)))

    def play(position: int, sim: Simulation) -> None:
        name = sim.strategy.name
        started = time.time()
        bar = _progress(name, sim.ticks, progress, position if at_once > 1 else None)
        for k, (t, logs, jobs) in enumerate(sim):
            sink.add(name, logs, jobs)
            if (k + 1) % window_ticks == 0:
                sink.flush()
            if bar is not None:
                bar.update(1)
            if after_tick is not None:
                after_tick(name, k)
        sink.uploads[name], sink.label_gpu_s[name] = sim.manager.stats()
        if bar is not None:
            bar.close()
        else:
            log(f"{name:>9}: done in {time.time() - started:.0f} s")
        sink.flush()

    if at_once <= 1:  # in this thread: torch's settings are this thread's
        for i, sim in enumerate(sims):
            play(i, sim)
    else:
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="driftlab-strategy") as pool:
            for done in [pool.submit(play, i, sim) for i, sim in enumerate(sims)]:
                done.result()
    summary = sink.summary(names)
    if out_dir:
        summary.to_parquet(os.path.join(out_dir, "summary.parquet"), index=False)
        plot_accuracy(sink.frames(), os.path.join(out_dir, "accuracy.png"),
                      title=f"{cfg.scenario if not cfg.source else os.path.basename(cfg.source)}: "
                            f"{cfg.cameras} cameras, seed {cfg.seed}")
    return summary


def _progress(name: str, ticks: int, enabled: bool, position: int | None = None):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=ticks, desc=f"{name:>9}", unit="tick", leave=True, position=position,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} ticks [{elapsed}<{remaining}]")
