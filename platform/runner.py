"""The inline runner: every strategy of a config, one process, same streams.

Builds the fleet once (sources, the cached teacher, each camera's initial
student), runs each strategy's :class:`~driftlab.platform.sim.Simulation`
and streams the results into a :class:`ResultSink`. The Ray runner
(:mod:`driftlab.actors.runner`) shares all of it but where the parts run.
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pandas as pd
import torch
import yaml

from .config import ConfigError, SimConfig, config_to_dict, describe_sources
from .metrics import PROGRESS, ResultSink, plot_accuracy, write_atomic, write_parquet
from .models import default_device, load_teacher_weights, predict
from .sim import Fleet, Simulation, inline_simulation
from .strategies import parse_strategies
from .world import CameraStream, FrameSource, get_scenario
from .world.recorded import RecordedSource, SourceSpec, open_recording
from .pretrained import (StudentJob, TrainStudents, given_student, initial_students, load_teacher_genkd,
                         teacher_genkd_checkpoint, train_students_here, with_teacher_weights)

__all__ = ["build_sources", "label_recordings", "build_fleet", "run_inline", "run_strategies", "finished_summary",
           "set_determinism"]


def set_determinism(threads: int | None = None) -> None:
    """Fix torch's thread count so float results repeat run to run (and
    equal in every process of a run: a sum split over another number of
    threads rounds differently)."""
    torch.set_num_threads(threads or min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_sources(cfg: SimConfig, log: Callable[[str], None] = print) -> list[FrameSource]:
    """What each camera plays (``cfg.sources``, else the synthetic world);
    recordings are opened and their length checked here, so a bad or short
    file fails before any model is trained."""
    scenario = get_scenario(cfg.scenario)
    out: list[FrameSource] = []
    for i, spec in enumerate(cfg.sources or [SourceSpec()] * cfg.cameras):
        out.append(CameraStream(cfg.world, scenario, i, cfg.cameras, cfg.seed, cfg.duration) if spec.synthetic
                   else open_recording(spec, i, cfg.world.fps, cfg.frame_size, cfg.duration, cfg.classes))
    for src in out:   # every file opened first: a missing one is named before a short one
        if isinstance(src, RecordedSource):
            src.check_length(cfg.window, cfg.duration, log)
    return out


def label_recordings(sources: list[FrameSource], teacher: torch.nn.Module, device,
                     log: Callable[[str], None] = print, chunk: int = 256) -> None:
    """Where a recording's labels CSV is silent (or absent), the teacher's
    labels stand in for ground truth, as Ekya and AMS score on real video:
    every frame the run plays, and its past, is decoded once and labelled."""
    todo = [s for s in sources if isinstance(s, RecordedSource) and (s.labels < 0).any()]
    total = sum(len(s.labels) for s in todo)
    started = shown = time.time()
    done = 0
    for src in todo:
        labels = np.full(len(src.labels), -1, np.int64)
        for a in range(-src.past_frames, src.num_frames, chunk):
            batch = src.frames(a, min(a + chunk, src.num_frames))
            labels[a + src.past_frames:a + src.past_frames + len(batch)] = predict(teacher, batch.images,
                                                                                  device=device)[0]
            done += len(batch)
            if time.time() - shown > 10:
                shown = time.time()
                log(f"  teacher labels for recordings: {done}/{total} frames, {shown - started:.0f} s")
        src.set_unknown_labels(labels)


def build_fleet(cfg: SimConfig, log: Callable[[str], None] = print,
                train_students: TrainStudents = train_students_here) -> Fleet:
    """The sources, the teacher and each camera's initial student (given, or
    trained by ``train_students`` where not cached) a run's strategies all start from."""
    device = default_device()
    sources = build_sources(cfg, log)
    if any(isinstance(s, RecordedSource) for s in sources) and cfg.teacher.weights is None:
        log("warning: recordings labelled by the synthetic world's teacher (teacher.weights not set): "
            "its labels are shapes, not your classes")
    teacher_spec = with_teacher_weights(cfg.world, cfg.teacher, device, log)
    teacher = load_teacher_weights(teacher_spec, cfg.num_classes).to(device)
    label_recordings(sources, teacher, device, log)
    if cfg.student.weights is not None:
        students = [given_student(cfg.student, cfg.num_classes, device)] * len(sources)
    else:
        past = int(round(cfg.warmup * cfg.world.fps))
        jobs, keys = [], []
        for i, src in enumerate(sources):
            if isinstance(src, RecordedSource):
                # A recording that starts at its first frame has no past: its
                # student learns from its first fifth (at most ``warmup``).
                n = past if src.past_frames else min(past, max(8, src.num_frames // 5))
                job = StudentJob(src, cfg.student, cfg.num_classes, n)
                # Its labels (CSV or teacher) belong in the key; read, not decoded again.
                first, last = job.past_range()
                past_labels = src.labels[first + src.past_frames:last + src.past_frames]
                keys.append((*src.key, hashlib.sha256(past_labels.tobytes()).hexdigest()[:16]))
            else:
                # A camera's past holds its scenario's first condition whatever the
                # fleet's size (the scenario is held constant before t=0).
                job = StudentJob(src, cfg.student, cfg.num_classes, past)
                keys.append((str(cfg.world), cfg.scenario, cfg.seed, i))
            jobs.append(job)
        students = initial_students(jobs, keys, train_students, device, log)
    fleet = Fleet(sources, students, teacher, teacher_spec, device)
    if cfg.distill == "genkd":   # the teacher's seed 2 head and CVAE
        fleet.genkd_checkpoint = teacher_genkd_checkpoint(cfg.world, teacher, teacher_spec.weights, device, log)
        fleet.teacher_head, fleet.teacher_cvae = load_teacher_genkd(fleet.genkd_checkpoint, device)
    return fleet


def run_inline(cfg: SimConfig, out_dir: str | None = None, progress: bool = True,
               log: Callable[[str], None] = print, fleet: Fleet | None = None, resume: bool = False) -> pd.DataFrame:
    """Run every strategy of ``cfg`` in this process; write results to ``out_dir``;
    return the summary. With ``resume``, the strategies a killed run of the
    same config finished in ``out_dir`` are read back, not run again."""
    strategies = parse_strategies(cfg)
    set_determinism()
    fleet = fleet or build_fleet(cfg, log)
    return run_strategies(cfg, [inline_simulation(cfg, s, fleet) for s in strategies], out_dir, progress, log,
                          resume=resume)


def _check_resumable(cfg: SimConfig, out_dir: str) -> None:
    """A :class:`ConfigError` when ``out_dir`` holds a run of another config."""
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old, new = yaml.safe_load(f), config_to_dict(cfg)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot resume: {path} is unreadable ({e}); give a new --out") from None
    if not isinstance(old, dict):
        raise ConfigError(f"cannot resume: {path} is not a config; give a new --out")
    default = config_to_dict(SimConfig())   # a setting newer than the run's file has its default there
    differs = sorted(k for k in set(old) | set(new) if old.get(k, default.get(k)) != new.get(k))
    if differs:
        raise ConfigError(f"cannot resume: {out_dir} holds a run of another config (it differs in "
                          f"{', '.join(differs)}); run the same command, or give a new --out")


def finished_summary(cfg: SimConfig, out_dir: str) -> pd.DataFrame | None:
    """The summary a finished run of ``cfg`` left in ``out_dir``; None when
    it has none (never started, or killed before its end)."""
    _check_resumable(cfg, out_dir)
    path = os.path.join(out_dir, "summary.parquet")
    return pd.read_parquet(path) if os.path.exists(path) else None


def run_strategies(cfg: SimConfig, sims: list[Simulation], out_dir: str | None = None, progress: bool = True,
                   log: Callable[[str], None] = print,
                   after_tick: Callable[[str, int], None] | None = None, at_once: int = 1,
                   resume: bool = False) -> pd.DataFrame:
    """Play the strategies' simulations, ``at_once`` at a time (inline one
    after another; on Ray each strategy's fleet at the same time), streaming
    their ticks into one :class:`ResultSink` that is flushed to Parquet every
    window; write the summary and the plot; return the summary. The results
    are the same whatever ``at_once`` is. ``after_tick(strategy, tick)`` runs
    after each tick (tests inject faults there). With ``resume`` (and
    ``out_dir``), strategies that ``out_dir`` records as finished are read
    back instead of run; an interrupted one runs again from its start (a
    strategy's state, models and queues included, is not checkpointed)."""
    names = [sim.strategy.name for sim in sims]
    if out_dir and resume:
        _check_resumable(cfg, out_dir)
    elif out_dir:   # a fresh run: no record of an earlier one may pass for its own
        for name in (PROGRESS, "summary.parquet"):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    sink = ResultSink(out_dir, names, cfg.classes, resume=resume)
    if out_dir:
        write_atomic(os.path.join(out_dir, "config.yaml"), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    if sink.done:
        log(f"resuming {out_dir}: {', '.join(sink.done)} finished before; running "
            f"{', '.join(n for n in names if n not in sink.done) or 'nothing'}")
        sims = [sim for sim in sims if sim.strategy.name not in sink.done]
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
        sink.finish(name, *sim.manager.stats())
        if bar is not None:
            bar.close()
        else:
            log(f"{name:>9}: done in {time.time() - started:.0f} s")

    if at_once <= 1:  # in this thread: torch's settings are this thread's
        for i, sim in enumerate(sims):
            play(i, sim)
    else:
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="driftlab-strategy") as pool:
            for done in [pool.submit(play, i, sim) for i, sim in enumerate(sims)]:
                done.result()
    summary = sink.summary(names)
    if out_dir:   # the summary last: a resumed run takes it as the mark of a finished one
        plot_accuracy(sink.frames(), os.path.join(out_dir, "accuracy.png"),
                      title=f"{describe_sources(cfg)}: {cfg.cameras} cameras, seed {cfg.seed}",
                      classes=cfg.classes)
        write_parquet(summary, os.path.join(out_dir, "summary.parquet"), cfg.classes)
    return summary


def _progress(name: str, ticks: int, enabled: bool, position: int | None = None):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=ticks, desc=f"{name:>9}", unit="tick", leave=True, position=position,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} ticks [{elapsed}<{remaining}]")
