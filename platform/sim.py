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
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .config import SimConfig
from .distill.frames import FrameHead, GenKDTargets, teach
from .drift import DriftDetector
from .filters import Candidates, class_mix, mix_shift
from .models import Recalibration, build_student, clone, count_params, predict, recalibrate_bn
from .scheduling import Job, Request, Samples, SampleStore, closest, condition_stats, share_gpu
from .strategies import Strategy, build_strategy
from .training import FitResult, TrainSpec, fit, top_gradient_mask
from .world import FrameSource

__all__ = ["Camera", "Server", "Fleet", "FrameLog", "JobRecord", "Upload", "JobInputs", "Deployment",
           "run_job", "serve_jobs", "uploads_at", "num_ticks", "Simulation", "run_strategy"]


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


@dataclass
class Upload:
    """Frames a camera's filter picked, with the teacher's logits for them
    (and its attention, for genkd distillation), and, for a manager that
    reads it, the mean condition of every frame the camera saw since its last
    upload (12 ms per 40 frames at 64 px, 170 ms at 256 px: only when read)."""

    camera: int
    images: np.ndarray
    times: np.ndarray
    logits: np.ndarray
    est_accuracy: float
    mix_shift: float
    last_update: float
    attention: np.ndarray | None = None
    condition: np.ndarray | None = None


@dataclass
class JobInputs:
    """Everything a retraining job needs, self-contained so it can run in
    another process (a Ray Train worker) as well as in this one."""

    arch: str
    num_classes: int
    state: dict
    images: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    spec: TrainSpec
    update_fraction: float = 1.0
    teacher_logits: np.ndarray | None = None  # for distillation (``spec.kd_weight``)
    genkd: GenKDTargets | None = None          # for seed 2's distillation (``distill: genkd``)

    def run(self, device: torch.device | str = "cpu") -> tuple[dict, FitResult]:
        return run_job(self, device)


@dataclass
class Deployment:
    """New weights for a camera, arriving at stream time ``record.deployed``."""

    record: JobRecord
    version: int
    state: dict


def run_job(inputs: JobInputs, device: torch.device | str = "cpu") -> tuple[dict, FitResult]:
    """Train a fresh copy of the server's student on the job's samples; return
    the new weights (on CPU) and what the training ran."""
    model = build_student(inputs.arch, inputs.num_classes)
    model.load_state_dict(inputs.state)
    # Arrays from Ray's object store are read-only; torch wants writable ones.
    images, labels = (np.require(a, requirements="W") for a in (inputs.images, inputs.labels))
    mask = None
    if inputs.update_fraction < 1.0 and len(labels) >= 2:
        mask = top_gradient_mask(model, images, labels, inputs.update_fraction, device)
    result = fit(model, images, labels, inputs.spec, weights=inputs.weights, grad_mask=mask,
                 teacher_logits=inputs.teacher_logits, genkd=inputs.genkd, device=device)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, result


class Camera:
    """An edge camera: plays its stream, infers every frame with its current
    student, buffers frames for the filter, and swaps in new weights at the
    exact stream time they arrive. With a drift ``detector`` (the change-point
    trigger) it uploads only when the detector asks for it. With a
    :class:`~driftlab.platform.models.Recalibration` it refits its model's
    shallow BatchNorm statistics to its latest frames after every tick and
    every new model, once it has left the condition its initial model fits."""

    def __init__(self, index: int, source: FrameSource, student: nn.Module, num_classes: int,
                 batch_size: int = 256, detector: DriftDetector | None = None,
                 recalibrate: Recalibration = Recalibration()):
        self.index, self.source, self.model = index, source, student
        self.num_classes, self.batch_size = num_classes, batch_size
        self.detector = detector
        self.recalibrate = recalibrate
        # (times, images, their conditions when the home check or the window's reach needs them) for recalibration
        self._recent: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._home: tuple[np.ndarray | None, int] = (None, 0)  # sum, count of conditions at home
        self._left_home = False
        self._until = 0.0  # the stream time the recent frames reach
        self.version = 0
        self.last_update = 0.0
        self.last_upload = 0.0
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
        if self.detector is not None:
            self.detector.observe(batch.times, batch.images, confs, until)
        if self.recalibrate.layers > 0:
            r = self.recalibrate
            extends = r.max_window > r.window
            conditions = condition_stats(batch.images) if (self._watching_home() or extends) and n else None
            self._until = until
            self._recent = [b for b in self._recent + [(batch.times, batch.images, conditions)]
                            if len(b[0]) and b[0][-1] >= until - max(r.window, r.max_window)]
            self._refit()
        return FrameLog(self.index, batch.times, batch.labels, preds, confs, versions,
                        self.source.drifted(batch.times))

    def _swap(self) -> None:
        t, version, state = self.pending.pop(0)
        self.model.load_state_dict(state)
        self.model.eval()
        self.version, self.last_update = version, t
        self._refit()

    def _refit(self) -> None:
        """Fit the model's shallow BatchNorm statistics to the recent frames,
        once the camera has left home (see :class:`Recalibration`)."""
        if self.recalibrate.layers == 0 or not self._recent:
            return
        latest = [b for b in self._recent if b[0][-1] >= self._until - self.recalibrate.window]
        if self._watching_home():
            if self._at_home(latest):
                # The latest tick's frames join the reference of what home looks like.
                total, count = self._home
                tick = self._recent[-1][2]
                self._home = tick.sum(axis=0) + (total if count else 0.0), count + len(tick)
                return
            self._left_home = True
        frames = self._same_condition(latest)
        recalibrate_bn(self.model, np.concatenate([b[1] for b in frames]), self.recalibrate.layers)

    def _same_condition(self, latest: list) -> list:
        """``latest`` (the last ``window`` seconds) and the earlier
        ``window``-long blocks, up to ``max_window`` seconds back, whose mean
        condition is within ``same_distance`` of its own, back to the first
        that is not (see :class:`Recalibration`)."""
        r = self.recalibrate
        if r.max_window <= r.window:
            return latest
        now = np.concatenate([b[2] for b in latest]).mean(axis=0)
        frames, k = latest, 1
        while (k + 1) * r.window <= r.max_window:
            block = [b for b in self._recent
                     if self._until - (k + 1) * r.window <= b[0][-1] < self._until - k * r.window]
            if not block or np.linalg.norm(
                    np.concatenate([b[2] for b in block]).mean(axis=0) - now) >= r.same_distance:
                break
            frames, k = block + frames, k + 1
        return frames

    def _watching_home(self) -> bool:
        """Whether the camera may still be at home: it runs its initial model
        and has not left the condition it started in."""
        return self.recalibrate.home_distance > 0 and self.version == 0 and not self._left_home

    def _at_home(self, latest: list) -> bool:
        """Whether the mean condition of the ``latest`` frames is within
        ``home_distance`` of all the camera saw at home before them (each
        frame's condition is computed once, in :meth:`run`)."""
        total, count = self._home
        recent = np.concatenate([b[2] for b in latest])
        return not count or np.linalg.norm(recent.mean(axis=0) - total / count) < self.recalibrate.home_distance

    def upload(self, strategy: Strategy, now: float, teach: Callable[[np.ndarray], dict],
               ) -> Upload | None:
        """The strategy's filter picks frames buffered since the last upload,
        within its budget; ``teach`` (the teacher) returns their ``logits``,
        whose argmax are the labels (and, for genkd, its ``attention``).
        Under the change-point trigger, nothing unless the detector asks for
        an upload (the buffer then keeps only the last period's frames)."""
        if self.detector is not None and not self.detector.wants_upload(
                now, self.last_upload, strategy.period()):
            self._buf = [b for b in self._buf if len(b[1]) and b[1][-1] >= now - strategy.period()]
            return None
        self.last_upload = now
        images, cands = self._take_candidates()
        if len(cands) == 0:
            return None
        budget = strategy.budget(self.index, len(cands))
        # One generator per (camera, upload): the same picks in any process.
        rng = np.random.default_rng((strategy.cfg.seed, self.index, int(round(now * 10))))
        picks = strategy.select(self.index, cands, budget, now, rng)
        if len(picks) == 0:
            return None
        taught = teach(images[picks])
        logits = np.asarray(taught["logits"], np.float32)
        labels = logits.argmax(axis=1)
        strategy.observe_labels(self.index, labels)
        return Upload(self.index, images[picks], cands.times[picks], logits,
                      est_accuracy=float((cands.preds[picks] == labels).mean()),
                      mix_shift=mix_shift(class_mix(cands.preds, self.num_classes), cands.prev_mix),
                      last_update=self.last_update, attention=taught.get("attention"),
                      condition=condition_stats(images).mean(axis=0) if strategy.reads_condition() else None)

    def _take_candidates(self) -> tuple[np.ndarray, Candidates]:
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
    """The server's state: the labelled-sample store, its copy of each camera's
    student (with its seed 2 head and CVAE under genkd, whose jobs also need
    the ``teacher_cvae`` weights), and the timelines of the teacher and of the
    GPUs retraining runs on. The teacher itself labels on the camera's call
    (:meth:`Camera.upload`)."""

    def __init__(self, cfg: SimConfig, students: list[nn.Module], device: torch.device | str = "cpu",
                 teacher_cvae: dict | None = None):
        if cfg.distill == "genkd" and teacher_cvae is None:
            raise ValueError("distill 'genkd' needs the teacher's seed 2 CVAE")
        self.cfg, self.device, self.teacher_cvae = cfg, device, teacher_cvae
        self.models = [clone(s) for s in students]
        self.genkd_parts: list[dict | None] = [None] * len(students)
        self.genkd_jobs = [0] * len(students)
        self.stores = [SampleStore() for _ in students]
        self.gpu_free_at = 0.0
        self.teacher_free_at = 0.0
        self.versions = [0] * len(students)
        self.label_gpu_s = 0.0
        self.uploaded = 0

    def receive(self, up: Upload, now: float) -> Request:
        """Store an upload's labelled frames; charge the teacher's time; the
        retraining request is ready when the labels are."""
        cost = len(up.images) * self.cfg.costs.label_s_per_frame
        self.label_gpu_s += cost
        self.uploaded += len(up.images)
        self.teacher_free_at = max(self.teacher_free_at, now) + cost
        # Each upload's conditions are computed once, here, not in every job that borrows it.
        conditions = condition_stats(up.images) if self.cfg.borrow > 0 else None
        self.stores[up.camera].add(up.images, up.logits, up.times, up.attention, ready=self.teacher_free_at,
                                   conditions=conditions)
        return Request(camera=up.camera, cutoff=now, ready=self.teacher_free_at,
                       est_accuracy=up.est_accuracy, mix_shift=up.mix_shift,
                       last_update=up.last_update, condition=up.condition)

    # --- Profiler protocol (Ekya's micro-profiler) -----------------------------
    def num_samples(self, camera: int, since: float, until: float) -> int:
        return len(self.stores[camera].select(since, until).labels)

    def profile(self, camera: int, since: float, until: float, layers: str,
                epochs: int) -> tuple[list[float], int]:
        s = self.stores[camera].select(since, until)
        if len(s.labels) < 8:
            return [], 0
        rng = np.random.default_rng(len(s.labels) * 7919 + camera)
        perm = rng.permutation(len(s.labels))
        n_val = max(2, len(s.labels) // 4)
        val, tr = perm[:n_val], perm[n_val:]
        result = fit(clone(self.models[camera]), s.images[tr], s.labels[tr],
                     self.cfg.train_spec(epochs=epochs, layers=layers, seed=int(rng.integers(2**31))),
                     val=(s.images[val], s.labels[val]), teacher_logits=s.logits[tr], device=self.device)
        return result.val_accuracy, result.sample_epochs

    # --- retraining ----------------------------------------------------------
    def job_inputs(self, job: Job, start: float) -> JobInputs:
        """The samples, weights and starting weights of ``job``, which starts at ``start``."""
        r = job.request
        s = self.stores[r.camera].select(job.since, r.cutoff)
        if job.data_fraction < 1.0 and len(s.labels):
            rng = np.random.default_rng(job.spec.seed)
            n = len(s.labels)
            s = s.subset(np.sort(rng.choice(n, max(1, int(round(job.data_fraction * n))), replace=False)))
        if self.cfg.borrow > 0:
            s = Samples.concat([s, self.borrowed(r.camera, r.cutoff, start)])
        weights = None if job.tau is None else np.exp(-(r.cutoff - s.times) / job.tau)
        state = {k: v.detach().cpu() for k, v in self.models[r.camera].state_dict().items()}
        genkd = None
        if self.cfg.distill == "genkd":
            genkd = GenKDTargets(s.attention, self.teacher_cvae, self.genkd_parts[r.camera],
                                 self.genkd_jobs[r.camera])
        return JobInputs(self.cfg.student, self.cfg.world.num_classes, state, s.images, s.labels,
                         weights, job.spec, job.update_fraction,
                         teacher_logits=s.logits if job.spec.kd_weight > 0 else None, genkd=genkd)

    def borrowed(self, camera: int, cutoff: float, start: float) -> Samples:
        """Up to ``cfg.borrow`` samples the other cameras uploaded in the
        ``cfg.borrow_window`` seconds before ``cutoff`` (labelled by ``start``),
        the closest in condition to this camera's newest upload."""
        pool = Samples.concat([store.select(cutoff - self.cfg.borrow_window, cutoff, ready_by=start)
                               for j, store in enumerate(self.stores) if j != camera])
        return closest(pool, self.stores[camera].newest(cutoff).conditions, self.cfg.borrow)

    def downlink_s(self, camera: int, fraction: float) -> float:
        return count_params(self.models[camera]) / 1e6 * fraction * self.cfg.costs.downlink_s_per_mparam


Executor = Callable[[list[JobInputs]], list["tuple[dict, FitResult] | None"]]


def serve_jobs(strategy: Strategy, server: Server, until: float, execute: Executor) -> list[Deployment]:
    """Start every job the manager schedules before ``until``: ``execute`` runs
    a batch of jobs (here, or on Ray Train; ``None`` for one that failed), the
    GPU timeline charges them, and each finished job becomes a deployment."""
    out: list[Deployment] = []
    while strategy.pending:
        start = max(server.gpu_free_at, min(r.ready for r in strategy.pending))
        if start >= until:
            break
        batch = strategy.next_batch(start, server)
        if not batch:
            nxt = [r.ready for r in strategy.pending if r.ready > start]
            if not nxt:
                break  # the manager declined every ready request
            server.gpu_free_at = max(server.gpu_free_at, min(nxt))
            continue
        done = [(job, res) for job, res in zip(batch, execute([server.job_inputs(j, start) for j in batch]))
                if res is not None]
        if not done:
            continue  # every job failed: nothing ran, the GPUs stay free
        costs = server.cfg.costs
        work = [fit_.sample_epochs * costs.train_s_per_sample_epoch
                * (costs.genkd_factor if fit_.genkd_parts is not None else 1.0) + job.overhead_s
                for job, (_, fit_) in done]
        finishes = share_gpu(start, work, [job.share for job, _ in done], server.cfg.server_gpus)
        server.gpu_free_at = max(finishes)
        for (job, (state, fit_)), fin, w in zip(done, finishes, work):
            cam = job.request.camera
            server.models[cam].load_state_dict(state)
            server.versions[cam] += 1
            if fit_.genkd_parts is not None:
                server.genkd_parts[cam] = fit_.genkd_parts
                server.genkd_jobs[cam] += 1
            deployed = fin + server.downlink_s(cam, job.update_fraction)
            out.append(Deployment(JobRecord(cam, job.request.cutoff, start, fin, deployed,
                                            fit_.samples, fit_.epochs_run, w),
                                  server.versions[cam], state))
    return out


@dataclass
class Fleet:
    """Everything a strategy run starts from: one source, initial student, and
    the teacher, shared by every strategy so all see the same streams."""

    sources: list[FrameSource]
    students: list[nn.Module]
    teacher: nn.Module
    device: torch.device | str = "cpu"
    ground_truth: list[np.ndarray | None] = field(default_factory=list)
    genkd_checkpoint: str | None = None     # seed 2's head and CVAE on the teacher
    teacher_head: FrameHead | None = None   # (for genkd distillation): the file,
    teacher_cvae: dict | None = None        # the head, the CVAE's weights

    def true_labels(self, log: FrameLog) -> None:
        """Replace a log's labels by the fleet's ground truth, where it has one
        (a video file's labels CSV, or the teacher's labels standing in)."""
        gt = self.ground_truth[log.camera] if self.ground_truth else None
        if gt is not None:
            log.labels = gt[np.round(log.times * self.sources[log.camera].fps).astype(int)]


def uploads_at(strategy: Strategy, cfg: SimConfig, k: int) -> bool:
    """Whether cameras upload (and request retraining) after tick ``k``; under
    the change-point trigger, every tick asks each camera's detector."""
    if not strategy.adapts:
        return False
    return strategy.changepoint or (k + 1) % max(1, int(round(strategy.period() / cfg.tick))) == 0


def num_ticks(cfg: SimConfig, sources: list[FrameSource]) -> tuple[int, float]:
    """Ticks to play, and the stream seconds they cover (the shortest source bounds it)."""
    duration = min(cfg.duration, min(s.num_frames / s.fps for s in sources))
    return int(math.ceil(duration / cfg.tick - 1e-9)), duration


class Simulation:
    """One strategy's run in this process, advanced tick by tick: iterating it
    yields ``(t, frame logs of the tick, jobs started in it)``."""

    def __init__(self, cfg: SimConfig, name: str, fleet: Fleet):
        self.cfg, self.fleet = cfg, fleet
        self.strategy = build_strategy(name, cfg)
        self.cameras = [Camera(i, src, clone(s), cfg.world.num_classes,
                               detector=self.strategy.drift_detector(),
                               recalibrate=self.strategy.recalibration())
                        for i, (src, s) in enumerate(zip(fleet.sources, fleet.students))]
        self.server = Server(cfg, fleet.students, fleet.device, fleet.teacher_cvae)

    def _teach(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return teach(self.fleet.teacher, images, self.fleet.teacher_head, device=self.fleet.device)

    def _execute(self, batch: list[JobInputs]) -> list[tuple[dict, FitResult]]:
        return [run_job(inputs, self.fleet.device) for inputs in batch]

    def __iter__(self) -> Iterator[tuple[float, list[FrameLog], list[JobRecord]]]:
        cfg, strategy, server, cameras = self.cfg, self.strategy, self.server, self.cameras
        ticks, duration = num_ticks(cfg, self.fleet.sources)
        for k in range(ticks):
            t1 = min((k + 1) * cfg.tick, duration)
            deployments = serve_jobs(strategy, server, t1, self._execute) if strategy.adapts else []
            for d in deployments:
                cameras[d.record.camera].deploy_at(d.record.deployed, d.version, d.state)
            logs = [cam.run(t1) for cam in cameras]
            for log in logs:
                self.fleet.true_labels(log)
            if uploads_at(strategy, cfg, k):
                for cam in cameras:
                    up = cam.upload(strategy, t1, self._teach)
                    if up is not None:
                        strategy.submit(server.receive(up, t1))
            yield t1, logs, [d.record for d in deployments]


def run_strategy(cfg: SimConfig, name: str, fleet: Fleet,
                 on_tick: Callable[[float, list[FrameLog], list[JobRecord]], None] | None = None,
                 ) -> tuple[Strategy, Server]:
    """Play the whole stream for strategy ``name`` in this process; results go
    to ``on_tick`` after every tick (the tick's frames, the jobs started in it)."""
    sim = Simulation(cfg, name, fleet)
    for tick in sim:
        if on_tick is not None:
            on_tick(*tick)
    return sim.strategy, sim.server
