"""The continual-learning loop on a virtual clock, written once.

stream -> student inference -> sample filter -> teacher labels -> training
manager -> retraining on the server's GPUs -> deployment to the camera.

:class:`Simulation` moves a fleet through stream time in ticks over two
interfaces, in the way RLlib's ``EnvRunnerGroup.foreach_env_runner`` drives
local or remote runners: :class:`Cameras` (apply a call to every camera) and
:class:`Manager` (the server: receive uploads, serve jobs). The inline runner
supplies in-process implementations (:class:`InlineCameras`,
:class:`FleetManager`); the Ray runner (:mod:`driftlab.actors.runner`) supplies
camera actors, a manager actor, the Serve teacher and Ray Train. Stream time
advances with frames; labeling and training are charged from the cost model,
so every number is independent of how loaded the machine is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Protocol

import torch
from torch import nn

from .camera import CameraGroup, FrameLog, Upload, build_camera
from .config import SimConfig, TeacherSpec
from .distill.frames import FrameHead
from .models import clone
from .plugins import job_plugins
from .server import Deployment, Executor, JobRecord, Server, run_job, serve_jobs
from .strategies import Strategy, TrainingManager, parse_strategy
from .teacher import teach
from .world import FrameSource

__all__ = ["Fleet", "Cameras", "Manager", "InlineCameras", "FleetManager", "Simulation", "inline_simulation",
           "num_ticks"]


@dataclass
class Fleet:
    """Everything a strategy run starts from, shared by every strategy so all
    see the same streams: one source and initial student per camera, and the
    teacher (``teacher_spec`` says what it is and where its weights are, for
    the Serve teacher; with genkd distillation also seed 2's head and CVAE
    weights, ``genkd_checkpoint`` their file)."""

    sources: list[FrameSource]
    students: list[nn.Module]
    teacher: nn.Module
    teacher_spec: TeacherSpec
    device: torch.device | str = "cpu"
    teacher_head: FrameHead | None = None
    teacher_cvae: dict | None = None
    genkd_checkpoint: str | None = None


class Cameras(Protocol):
    """The fleet's cameras, in groups (:class:`~driftlab.platform.camera.CameraGroup`), wherever they run."""

    def start(self, strategy: Strategy) -> None:
        """Fresh cameras (initial students, streams at 0) holding ``strategy``'s camera half."""

    def foreach(self, method: str, *args, fetch: bool = True) -> list:
        """``CameraGroup.<method>(*args)`` on every group, in parallel where it
        can; the answers of every camera in camera order (without ``fetch``,
        one handle per group that :meth:`Manager.submit` accepts: the group's
        list of answers inline, its object reference on Ray)."""

    def deploy(self, deployments: list[Deployment]) -> None:
        """Send each deployment's weights to its camera."""


class Manager(Protocol):
    """The server's side, wherever it runs."""

    def start(self, strategy: Strategy) -> None:
        """A fresh server (initial students, empty stores) and ``strategy``'s training manager."""

    def submit(self, now: float, uploads: list) -> None:
        """One upload round: each group's handle from ``Cameras.foreach("upload", fetch=False)``."""

    def serve(self, until: float) -> list[Deployment]:
        """Run every job the training manager schedules before stream time ``until``."""

    def stats(self) -> tuple[int, float]:
        """Frames uploaded and the teacher's GPU-seconds so far."""


def num_ticks(cfg: SimConfig, sources: list[FrameSource]) -> tuple[int, float]:
    """Ticks to play, and the stream seconds they cover: until the longest
    source ends (a camera whose recording ended plays no more frames)."""
    duration = min(cfg.duration, max(s.num_frames / s.fps for s in sources))
    return int(math.ceil(duration / cfg.tick - 1e-9)), duration


class Simulation:
    """One strategy's run over ``cameras`` and ``manager``, advanced tick by
    tick: iterating it yields ``(t, frame logs of the tick, jobs started in it)``."""

    def __init__(self, cfg: SimConfig, strategy: Strategy, fleet: Fleet, cameras: Cameras, manager: Manager):
        self.cfg, self.strategy, self.fleet = cfg, strategy, fleet
        self.cameras, self.manager = cameras, manager
        self.ticks, self.duration = num_ticks(cfg, fleet.sources)

    def __iter__(self) -> Iterator[tuple[float, list[FrameLog], list[JobRecord]]]:
        cfg, strategy, cameras, manager = self.cfg, self.strategy, self.cameras, self.manager
        cameras.start(strategy)
        manager.start(strategy)
        for k in range(self.ticks):
            t1 = min((k + 1) * cfg.tick, self.duration)
            deployments = manager.serve(t1) if strategy.adapts else []
            cameras.deploy(deployments)
            logs = cameras.foreach("run", t1)
            if strategy.adapts:
                manager.submit(t1, cameras.foreach("upload", t1, k, fetch=False))
            yield t1, logs, [d.record for d in deployments]


class InlineCameras:
    """Every camera in this process, one group, labelled by the fleet's teacher here."""

    def __init__(self, cfg: SimConfig, fleet: Fleet):
        self.cfg, self.fleet = cfg, fleet
        self.group = CameraGroup([])

    def start(self, strategy: Strategy) -> None:
        f = self.fleet
        labeller = partial(teach, f.teacher, head=f.teacher_head, device=f.device)
        self.group = CameraGroup([build_camera(strategy, self.cfg, i, src, clone(s), labeller)
                                  for i, (src, s) in enumerate(zip(f.sources, f.students))])

    def foreach(self, method: str, *args, fetch: bool = True) -> list:
        out = getattr(self.group, method)(*args)
        return out if fetch else [out]

    def deploy(self, deployments: list[Deployment]) -> None:
        self.group.deploy(deployments)


class FleetManager:
    """The server's side of a fleet: its :class:`Server` (stores, student
    copies, job plugins) and the strategy's training manager; ``execute`` runs
    each batch of jobs (here by default; on Ray Train inside the manager actor)."""

    def __init__(self, cfg: SimConfig, students: list[nn.Module], device: torch.device | str = "cpu",
                 teacher_cvae: dict | None = None, execute: Executor | None = None):
        self.cfg, self.students, self.device, self.teacher_cvae = cfg, students, device, teacher_cvae
        self.execute = execute or (lambda batch: [run_job(inputs, device) for inputs in batch])
        self.manager: TrainingManager | None = None
        self.server: Server | None = None

    def start(self, strategy: Strategy) -> None:
        self.manager = strategy.training_manager(self.cfg)
        self.server = Server(self.cfg, self.students, self.device, job_plugins(self.cfg, self.teacher_cvae, strategy))

    def submit(self, now: float, uploads: list[list[Upload | None]]) -> None:
        for group in uploads:
            for up in group:
                if up is not None:
                    self.manager.submit(self.server.receive(up, now))

    def serve(self, until: float) -> list[Deployment]:
        out = serve_jobs(self.manager, self.server, until, self.execute)
        # A request yet to be served reads its camera's uploads back from its
        # cutoff, a plugin (borrowing) every camera's; later requests from later.
        oldest = {}
        for r in self.manager.pending:
            oldest[r.camera] = min(r.cutoff, oldest.get(r.camera, until))
        reach = max([0.0] + [p.lookback() for p in self.server.plugins])
        shared = min(oldest.values(), default=until) - reach
        self.server.forget([min(oldest.get(c, until) - self.manager.lookback(), shared)
                            for c in range(len(self.server.stores))])
        return out

    def stats(self) -> tuple[int, float]:
        return self.server.uploaded, self.server.label_gpu_s


def inline_simulation(cfg: SimConfig, strategy: Strategy | str, fleet: Fleet) -> Simulation:
    """``strategy``'s run on ``fleet``, all in this process."""
    strategy = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    return Simulation(cfg, strategy, fleet, InlineCameras(cfg, fleet),
                      FleetManager(cfg, fleet.students, fleet.device, fleet.teacher_cvae))
