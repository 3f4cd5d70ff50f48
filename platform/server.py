"""The server's side of the loop: labelled samples, jobs and the GPU timeline.

:class:`Server` stores what the cameras upload, makes each job's
self-contained :class:`JobInputs`, and keeps its copy of every camera's
student. :func:`serve_jobs` lets a strategy's training manager start jobs on
the virtual GPU timeline and turns finished jobs into deployments. Job plugins
(:mod:`driftlab.platform.plugins`) add samples, columns, loss terms and cost
to jobs, and may deploy models of their own (the model zoo,
:mod:`driftlab.platform.zoo`); the server calls their hooks and knows no plugin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from .camera import Upload
from .models import build_student, clone, count_params
from .plugins import UPLOAD_COLUMNS, JobPlugin
from .scheduling import Job, Request, Samples, SampleStore, share_gpu
from .strategies import TrainingManager
from .strategies.base import train_spec
from .training import FitPlugin, FitResult, TrainSpec, evaluate, fit, top_gradient_mask

if TYPE_CHECKING:
    from .config import ModelSpec, SimConfig

__all__ = ["Server", "JobInputs", "JobRecord", "Deployment", "Executor", "run_job", "serve_jobs"]


@dataclass
class JobRecord:
    """One deployment, on the virtual clock: a finished retraining job
    (``kind="retrain"``) or a model the zoo held (``"zoo"``: started and
    finished are its check on the labelling GPU; its cost is in label GPU-s)."""

    camera: int
    submitted: float
    started: float
    finished: float
    deployed: float
    samples: int
    epochs: int
    gpu_s: float
    kind: str = "retrain"


@dataclass
class JobInputs:
    """Everything a retraining job needs, self-contained so it can run in
    another process (a Ray Train worker) as well as in this one.

    Attributes:
        arch, num_classes: the student (a ModelSpec or architecture name) and its classes.
        state: its starting weights.
        images, labels: uint8 (N, H, W, 3) frames and int labels (N,).
        weights: per-sample loss weights (N,) or ``None``.
        spec: how to train.
        update_fraction: share of parameters the job may change (AMS).
        teacher_logits: (N, K) for Hinton distillation (``spec.kd_weight``).
        plugins: the job plugins' parts inside :func:`~driftlab.platform.training.fit`.
    """

    arch: ModelSpec | str
    num_classes: int
    state: dict
    images: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    spec: TrainSpec
    update_fraction: float = 1.0
    teacher_logits: np.ndarray | None = None
    plugins: list[FitPlugin] = field(default_factory=list)

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
                 teacher_logits=inputs.teacher_logits, plugins=inputs.plugins, device=device)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, result


class Server:
    """The server's state: each camera's labelled-sample store, its copy of
    each camera's student, the job plugins, and the timelines of the teacher
    and of the GPUs retraining runs on. The teacher itself labels on the
    camera's call (:meth:`Camera.upload`)."""

    def __init__(self, cfg: SimConfig, students: list[nn.Module], device: torch.device | str = "cpu",
                 plugins: list[JobPlugin] = ()):
        self.cfg, self.device = cfg, device
        self.plugins = list(plugins)
        self.columns = sorted({c for p in self.plugins for c in p.columns})   # stored with each upload
        unknown = set(self.columns) - set(UPLOAD_COLUMNS)
        if unknown:
            raise ValueError(f"plugins ask for unknown upload columns {sorted(unknown)}; "
                             f"known: {', '.join(UPLOAD_COLUMNS)}")
        self.models = [clone(s) for s in students]
        self.stores = [SampleStore() for _ in students]
        self.gpu_free_at = 0.0
        self.teacher_free_at = 0.0
        self.versions = [0] * len(students)
        self.deployed_at = [0.0] * len(students)   # when each camera gets the server's copy
        self.answered = [-math.inf] * len(students)  # requests cut off before this were answered (a swap)
        self.label_gpu_s = 0.0
        self.uploaded = 0
        self.swaps: list[Deployment] = []   # plugins' deployments, out with the next serve_jobs

    def receive(self, up: Upload, now: float) -> Request:
        """Store an upload's labelled frames; charge the teacher's time; the
        retraining request is ready when the labels are. Plugins see the
        upload then and may deploy a model (:attr:`swaps`)."""
        cost = len(up.images) * self.cfg.costs.label_s_per_frame
        self.uploaded += len(up.images)
        self.teacher_free_at = self.charge_teacher(now, cost)
        columns = {name: UPLOAD_COLUMNS[name](up) for name in self.columns}
        self.stores[up.camera].add(up.images, up.taught, up.times, ready=self.teacher_free_at, columns=columns)
        request = Request(camera=up.camera, cutoff=now, ready=self.teacher_free_at,
                          est_accuracy=up.est_accuracy, mix_shift=up.mix_shift,
                          last_update=up.last_update, condition=up.condition)
        for p in self.plugins:
            p.after_upload(self, up, request)
        return request

    def charge_teacher(self, after: float, gpu_s: float) -> float:
        """Run ``gpu_s`` seconds of work on the labelling GPU, no earlier than
        ``after``; returns when it ends."""
        self.label_gpu_s += gpu_s
        self.teacher_free_at = max(self.teacher_free_at, after) + gpu_s
        return self.teacher_free_at

    def swap(self, camera: int, state: dict, record: JobRecord) -> None:
        """Make ``state`` the camera's model (a plugin's model, not a job's:
        it goes out with the next :func:`serve_jobs`), deployed at
        ``record.deployed``, which must not precede any model still on its
        way to the camera. The camera's requests cut off before
        ``record.submitted`` are answered: no job serves them."""
        if record.deployed < self.deployed_at[camera]:
            raise ValueError(f"camera {camera}: a swap deployed at {record.deployed} would land before "
                             f"the model on its way ({self.deployed_at[camera]})")
        self.models[camera].load_state_dict(state)
        self.versions[camera] += 1
        self.deployed_at[camera] = record.deployed
        self.answered[camera] = max(self.answered[camera], record.submitted)
        self.swaps.append(Deployment(record, self.versions[camera], state))

    def forget(self, before: list[float]) -> None:
        """Drop each camera's uploads older than its stream time in ``before``:
        what the server holds stays bounded by the strategy's lookback."""
        for store, t in zip(self.stores, before):
            store.forget(t)

    # --- Profiler protocol (Ekya's micro-profiler) -----------------------------
    def job_samples(self, camera: int, since: float, until: float) -> Samples:
        """Camera ``camera``'s samples of ``[since, until]`` as the plugins
        make them for a job (what Ekya's profile sees): after a zoo swap its
        frames since the swap; with borrowing, other cameras' samples
        labelled by ``until``. A job's data fraction is not applied."""
        s = self.stores[camera].select(since, until)
        for p in self.plugins:
            s = p.extend(self, camera, s, until, until)
        return s

    def num_samples(self, camera: int, since: float, until: float) -> int:
        """How many samples :meth:`job_samples` gives."""
        return len(self.job_samples(camera, since, until).labels)

    def profile(self, camera: int, since: float, until: float, layers: str, epochs: int,
                fraction: float = 1.0, min_samples: int = 8) -> tuple[list[float], int]:
        s = self.job_samples(camera, since, until)
        if len(s.labels) < 8:
            return [], 0
        rng = np.random.default_rng(len(s.labels) * 7919 + camera)
        perm = rng.permutation(len(s.labels))
        n_val = max(2, len(s.labels) // 4)
        val, rest = perm[:n_val], perm[n_val:]
        tr = rest[:max(min_samples, int(round(fraction * len(rest))))]
        spec = train_spec(self.cfg, epochs=epochs, layers=layers, seed=int(rng.integers(2**31)))
        model = clone(self.models[camera])
        before = evaluate(model, s.images[val], s.labels[val], self.device)[0]
        result = fit(model, s.images[tr], s.labels[tr], spec,
                     val=(s.images[val], s.labels[val]), teacher_logits=s.logits[tr], device=self.device)
        return [before, *result.val_accuracy], result.sample_epochs

    # --- retraining ----------------------------------------------------------
    def job_inputs(self, job: Job, start: float) -> JobInputs:
        """The samples, weights and starting weights of ``job``, which starts at ``start``."""
        r = job.request
        s = self.stores[r.camera].select(job.since, r.cutoff)
        if job.data_fraction < 1.0 and len(s.labels):
            rng = np.random.default_rng(job.spec.seed)
            n = len(s.labels)
            s = s.subset(np.sort(rng.choice(n, max(1, int(round(job.data_fraction * n))), replace=False)))
        for p in self.plugins:
            s = p.extend(self, r.camera, s, r.cutoff, start)
        weights = None if job.tau is None else np.exp(-(r.cutoff - s.times) / job.tau)
        state = {k: v.detach().cpu() for k, v in self.models[r.camera].state_dict().items()}
        fit_plugins = [fp for p in self.plugins if (fp := p.fit_plugin(r.camera, s)) is not None]
        return JobInputs(self.cfg.student, self.cfg.num_classes, state, s.images, s.labels,
                         weights, job.spec, job.update_fraction,
                         teacher_logits=s.logits if job.spec.kd_weight > 0 else None, plugins=fit_plugins)

    def finish(self, job: Job, state: dict, result: FitResult, deployed: float) -> int:
        """Take a finished job's weights as its camera's model, there at stream
        time ``deployed`` (not before any model already on its way: see
        :func:`serve_jobs`); returns its new version."""
        camera = job.request.camera
        self.models[camera].load_state_dict(state)
        self.versions[camera] += 1
        self.deployed_at[camera] = deployed
        for p in self.plugins:
            p.after_job(camera, result.plugin_states.get(p.name))
            p.new_model(self, camera, state, job.request.cutoff, deployed)
        return self.versions[camera]

    def work_s(self, result: FitResult, overhead_s: float) -> float:
        """GPU-seconds a finished job is charged (its plugins' extra cost included)."""
        costs = self.cfg.costs
        factor = math.prod(p.cost_factor(costs) for p in self.plugins)
        return result.sample_epochs * costs.train_s_per_sample_epoch * factor + overhead_s

    def downlink_s(self, camera: int, fraction: float) -> float:
        return count_params(self.models[camera]) / 1e6 * fraction * self.cfg.costs.downlink_s_per_mparam


Executor = Callable[[list[JobInputs]], list["tuple[dict, FitResult] | None"]]
"""Runs a batch of jobs (here, or on Ray Train); ``None`` for a job that failed."""


def serve_jobs(manager: TrainingManager, server: Server, until: float, execute: Executor) -> list[Deployment]:
    """Start every job ``manager`` schedules before ``until``: ``execute`` runs
    each batch, the GPU timeline charges them, and each finished job becomes a
    deployment. The plugins' deployments made since the last call
    (:attr:`Server.swaps`) come first, and the requests they answered are
    withdrawn from the manager."""
    out, server.swaps = server.swaps, []
    for camera, before in enumerate(server.answered):
        if before > -math.inf:
            manager.withdraw(camera, before)
    while manager.pending:
        start = max(server.gpu_free_at, min(r.ready for r in manager.pending))
        if start >= until:
            break
        batch = manager.next_batch(start, server)
        if not batch:
            nxt = [r.ready for r in manager.pending if r.ready > start]
            if not nxt:
                break  # the manager declined every ready request
            server.gpu_free_at = max(server.gpu_free_at, min(nxt))
            continue
        done = [(job, res) for job, res in zip(batch, execute([server.job_inputs(j, start) for j in batch]))
                if res is not None]
        if not done:
            continue  # every job failed: nothing ran, the GPUs stay free
        work = [server.work_s(fit_, job.overhead_s) for job, (_, fit_) in done]
        finishes = share_gpu(start, work, [job.share for job, _ in done], server.cfg.server_gpus)
        server.gpu_free_at = max(finishes)
        for (job, (state, fit_)), fin, w in zip(done, finishes, work):
            cam = job.request.camera
            # Never before a model still on its way (a plugin's): the camera applies them in time order.
            deployed = max(fin + server.downlink_s(cam, job.update_fraction), server.deployed_at[cam])
            version = server.finish(job, state, fit_, deployed)
            out.append(Deployment(JobRecord(cam, job.request.cutoff, start, fin, deployed,
                                            fit_.samples, fit_.epochs_run, w), version, state))
    return out
