"""The continual-learning loop on a virtual clock, and the inline runner.

stream -> student inference -> sample filter -> teacher labels -> training
manager -> retraining on the server's GPUs -> deployment to the camera.

:class:`Camera` and :class:`Server` hold the state of the two sides; the
:func:`run_strategy` loop moves them through stream time in ticks. Stream time
advances with frames; labeling and training are charged from the cost model,
so every number is independent of how loaded the machine is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import SimConfig
from .filters import Candidates, class_mix, mix_shift
from .models import clone, count_params, predict
from .scheduling import Job, Request, SampleStore, share_gpu
from .strategies import Strategy, build_strategy
from .training import FitResult, TrainSpec, fit, top_gradient_mask
from .world import FrameSource

__all__ = ["Camera", "Server", "run_strategy", "FrameLog", "JobRecord", "Fleet"]


@dataclass
class FrameLog:
    """Per-frame results of one tick of one camera."""

    camera: int
    times: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    confs: np.ndarray
    versions: np.ndarray
    drifted: np.ndarray


@dataclass
class JobRecord:
    """One finished retraining job, on the virtual clock."""

    camera: int
    submitted: float
    started: float
    finished: float
    deployed: float
    samples: int
    epochs: int
    gpu_s: float


class Camera:
    """An edge camera: plays its stream, infers every frame with its current
    student, buffers frames for the filter, and swaps in new weights at the
    exact stream time they arrive."""

    def __init__(self, index: int, source: FrameSource, student: nn.Module, num_classes: int,
                 batch_size: int = 256):
        self.index, self.source, self.model = index, source, student
        self.num_classes, self.batch_size = num_classes, batch_size
        self.version = 0
        self.last_update = 0.0
        self.pending: list[tuple[float, int, dict]] = []   # (time, version, state)
        self.position = 0                                    # next frame index
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.prev_mix = np.full(num_classes, 1.0 / num_classes)

    def deploy_at(self, t: float, version: int, state: dict) -> None:
        self.pending.append((t, version, state))
        self.pending.sort(key=lambda p: p[0])

    def run(self, until: float) -> FrameLog:
        """Infer every frame before stream time ``until``."""
        stop = min(int(math.ceil(until * self.source.fps - 1e-9)), self.source.num_frames)
        batch = self.source.frames(self.position, stop)
        self.position = stop
        n = len(batch)
        preds, confs = np.empty(n, np.int64), np.empty(n, np.float32)
        versions = np.empty(n, np.int64)
        i = 0
        while i < n:
            # Frames up to the next deployment use the current model.
            j = n
            if self.pending:
                j = int(np.searchsorted(batch.times, self.pending[0][0], side="left"))
                if j <= i:
                    self._swap()
                    continue
            preds[i:j], confs[i:j] = predict(self.model, batch.images[i:j], self.batch_size)
            versions[i:j] = self.version
            i = j
        self._buf.append((batch.images, batch.times, preds, confs))
        return FrameLog(self.index, batch.times, batch.labels, preds, confs, versions,
                        self.source.drifted(batch.times))

    def _swap(self) -> None:
        t, version, state = self.pending.pop(0)
        self.model.load_state_dict(state)
        self.model.eval()
        self.version, self.last_update = version, t

    def take_candidates(self) -> tuple[np.ndarray, Candidates]:
        """Frames buffered since the last upload decision, and clear the buffer."""
        if not self._buf:
            return np.empty((0,)), Candidates(np.empty(0), np.empty(0, np.int64), np.empty(0), self.prev_mix)
        images = np.concatenate([b[0] for b in self._buf])
        cands = Candidates(*(np.concatenate([b[k] for b in self._buf]) for k in (1, 2, 3)),
                           prev_mix=self.prev_mix)
        self._buf = []
        self.prev_mix = class_mix(cands.preds, self.num_classes)
        return images, cands


class Server:
    """The server: teacher labeling, the labelled-sample store, its copy of each
    camera's student, and the GPUs retraining runs on."""

    def __init__(self, cfg: SimConfig, teacher: nn.Module, students: list[nn.Module],
                 device: torch.device | str = "cpu"):
        self.cfg, self.teacher, self.device = cfg, teacher, device
        self.models = [clone(s) for s in students]
        self.stores = [SampleStore() for _ in students]
        self.gpu_free_at = 0.0
        self.teacher_free_at = 0.0
        self.versions = [0] * len(students)
        self.label_gpu_s = 0.0
        self.uploaded = 0

    # --- teacher -------------------------------------------------------------
    def label(self, camera: int, images: np.ndarray, times: np.ndarray, now: float) -> tuple[np.ndarray, float]:
        """Teacher labels for uploaded frames, and when they are ready."""
        if len(images) == 0:
            return np.empty(0, np.int64), now
        labels, _ = predict(self.teacher, images, device=self.device)
        cost = len(images) * self.cfg.costs.label_s_per_frame
        self.label_gpu_s += cost
        self.uploaded += len(images)
        self.teacher_free_at = max(self.teacher_free_at, now) + cost
        self.stores[camera].add(images, labels, times)
        return labels, self.teacher_free_at

    # --- Profiler protocol (Ekya's micro-profiler) -----------------------------
    def num_samples(self, camera: int, since: float, until: float) -> int:
        return len(self.stores[camera].select(since, until)[1])

    def profile(self, camera: int, since: float, until: float, layers: str,
                epochs: int) -> tuple[list[float], int]:
        images, labels, _ = self.stores[camera].select(since, until)
        if len(labels) < 8:
            return [], 0
        rng = np.random.default_rng(len(labels) * 7919 + camera)
        perm = rng.permutation(len(labels))
        n_val = max(2, len(labels) // 4)
        val, tr = perm[:n_val], perm[n_val:]
        result = fit(clone(self.models[camera]), images[tr], labels[tr],
                     TrainSpec(epochs=epochs, layers=layers, seed=int(rng.integers(2**31))),
                     val=(images[val], labels[val]), device=self.device)
        return result.val_accuracy, result.sample_epochs

    # --- retraining ----------------------------------------------------------
    def train(self, job: Job) -> tuple[dict, FitResult]:
        """Run ``job`` for real; returns the new weights and what it ran."""
        r = job.request
        images, labels, times = self.stores[r.camera].select(job.since, r.cutoff)
        if job.data_fraction < 1.0 and len(labels):
            rng = np.random.default_rng(job.spec.seed)
            keep = np.sort(rng.choice(len(labels), max(1, int(round(job.data_fraction * len(labels)))),
                                      replace=False))
            images, labels, times = images[keep], labels[keep], times[keep]
        weights = None if job.tau is None else np.exp(-(r.cutoff - times) / job.tau)
        model = self.models[r.camera]
        mask = None
        if job.update_fraction < 1.0 and len(labels) >= 2:
            mask = top_gradient_mask(model, images, labels, job.update_fraction, self.device)
        result = fit(model, images, labels, job.spec, weights=weights, grad_mask=mask,
                     device=self.device)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return state, result

    def downlink_s(self, camera: int, fraction: float) -> float:
        return count_params(self.models[camera]) / 1e6 * fraction * self.cfg.costs.downlink_s_per_mparam


@dataclass
class Fleet:
    """Everything a strategy run starts from: one source, initial student, and
    the teacher, shared by every strategy so all see the same streams."""

    sources: list[FrameSource]
    students: list[nn.Module]
    teacher: nn.Module
    device: torch.device | str = "cpu"
    ground_truth: list[np.ndarray | None] = field(default_factory=list)


def run_strategy(cfg: SimConfig, name: str, fleet: Fleet,
                 on_tick: Callable[[float, list[FrameLog], list[JobRecord]], None] | None = None,
                 ) -> tuple[Strategy, Server]:
    """Play the whole stream for strategy ``name``; results go to ``on_tick``
    after every tick (frames of the tick, jobs deployed so far not yet reported)."""
    strategy = build_strategy(name, cfg)
    cameras = [Camera(i, src, clone(s), cfg.world.num_classes)
               for i, (src, s) in enumerate(zip(fleet.sources, fleet.students))]
    server = Server(cfg, fleet.teacher, fleet.students, fleet.device)
    period_ticks = max(1, int(round(strategy.period() / cfg.tick)))
    rng = np.random.default_rng(cfg.seed)
    duration = min(cfg.duration, min(s.num_frames / s.fps for s in fleet.sources))
    num_ticks = int(math.ceil(duration / cfg.tick - 1e-9))
    for k in range(num_ticks):
        t0, t1 = k * cfg.tick, min((k + 1) * cfg.tick, duration)
        jobs = _serve(strategy, server, cameras, t1) if strategy.adapts else []
        logs = [cam.run(t1) for cam in cameras]
        for log in logs:
            gt = fleet.ground_truth[log.camera] if fleet.ground_truth else None
            if gt is not None:
                idx = np.round(log.times * fleet.sources[log.camera].fps).astype(int)
                log.labels = gt[idx]
        if strategy.adapts and (k + 1) % period_ticks == 0:
            for cam in cameras:
                _upload(strategy, server, cam, t1, rng)
        if on_tick is not None:
            on_tick(t1, logs, jobs)
    return strategy, server


def _upload(strategy: Strategy, server: Server, cam: Camera, now: float, rng) -> None:
    """The camera's filter picks frames; the teacher labels them; a request goes in."""
    images, cands = cam.take_candidates()
    if len(cands) == 0:
        return
    budget = strategy.budget(cam.index, len(cands))
    picks = strategy.select(cam.index, cands, budget, now, rng)
    if len(picks) == 0:
        return
    labels, ready = server.label(cam.index, images[picks], cands.times[picks], now)
    strategy.observe_labels(cam.index, labels)
    strategy.submit(Request(
        camera=cam.index, cutoff=now, ready=ready,
        est_accuracy=float((cands.preds[picks] == labels).mean()),
        mix_shift=mix_shift(class_mix(cands.preds, cam.num_classes), cands.prev_mix),
        last_update=cam.last_update))


def _serve(strategy: Strategy, server: Server, cameras: list[Camera], until: float) -> list[JobRecord]:
    """Start every job the manager schedules before ``until``; schedule deployments."""
    records = []
    while strategy.pending:
        start = max(server.gpu_free_at, min(r.ready for r in strategy.pending))
        if start >= until:
            break
        batch = strategy.next_batch(start, server)
        if not batch:
            if not strategy.pending:
                break
            nxt = [r.ready for r in strategy.pending if r.ready > start]
            if not nxt:
                break  # the manager declined every ready request
            server.gpu_free_at = max(server.gpu_free_at, min(nxt))
            continue
        results = [server.train(job) for job in batch]
        cost = server.cfg.costs.train_s_per_sample_epoch
        work = [res.sample_epochs * cost + job.overhead_s for job, (_, res) in zip(batch, results)]
        finishes = share_gpu(start, work, [j.share for j in batch], server.cfg.server_gpus)
        server.gpu_free_at = max(finishes)
        for job, (state, res), fin, w in zip(batch, results, finishes, work):
            cam = job.request.camera
            server.versions[cam] += 1
            deployed = fin + server.downlink_s(cam, job.update_fraction)
            cameras[cam].deploy_at(deployed, server.versions[cam], state)
            records.append(JobRecord(cam, job.request.cutoff, start, fin, deployed, res.samples,
                                     res.epochs_run, w))
    return records
