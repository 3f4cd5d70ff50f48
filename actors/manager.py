"""The priority manager as a Ray actor, wrapping the strategy's training manager.

It receives the cameras' labelled uploads as retraining requests, keeps the
queue, lets the strategy order and size jobs at run time on the virtual GPU
timeline (:func:`driftlab.platform.sim.serve_jobs`), runs each scheduled batch
on Ray Train through a :class:`~driftlab.actors.trainer.TrainClient`, and
returns the deployments (new weights) for the driver to push to the cameras.
Ekya's micro-profiling trials run here, in the manager's process.
"""
from __future__ import annotations

import ray

from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student, default_device
from driftlab.platform.runner import set_determinism
from driftlab.platform.sim import Deployment, Server, Upload, serve_jobs
from driftlab.platform.strategies import build_strategy

from .trainer import TrainClient

__all__ = ["ManagerActor"]


@ray.remote
class ManagerActor:
    def __init__(self, cfg: SimConfig, student_states: list[dict], train: TrainClient,
                 teacher_cvae: dict | None = None):
        from ray.util.metrics import Counter, Gauge

        set_determinism()
        self.cfg, self.train, self.teacher_cvae = cfg, train, teacher_cvae
        self.device = default_device()
        self.students = []
        for state in student_states:
            model = build_student(cfg.student, cfg.world.num_classes)
            model.load_state_dict(state)
            self.students.append(model.eval())
        self.strategy = self.server = None
        self._queue = Gauge("driftlab_queue_length", "retraining requests waiting",
                            tag_keys=("strategy",))
        self._delay = Gauge("driftlab_update_delay_s",
                            "stream seconds from a job's request to its deployment",
                            tag_keys=("strategy", "camera"))
        self._jobs = Counter("driftlab_jobs", "retraining jobs run", tag_keys=("strategy",))

    def start(self, strategy: str) -> None:
        """A fresh strategy and server state, from the initial students."""
        self.strategy = build_strategy(strategy, self.cfg)
        self.server = Server(self.cfg, self.students, self.device, self.teacher_cvae)

    def submit(self, now: float, uploads: list[Upload | None]) -> None:
        """Requests from one upload round, in camera order (the teacher's
        virtual queue charges them in that order)."""
        for up in uploads:
            if up is not None:
                self.strategy.submit(self.server.receive(up, now))
        self._queue.set(len(self.strategy.pending), {"strategy": self.strategy.name})

    def serve(self, until: float) -> list[Deployment]:
        """Run every job the strategy schedules before ``until``."""
        out = serve_jobs(self.strategy, self.server, until, self.train.run)
        tags = {"strategy": self.strategy.name}
        for d in out:
            self._delay.set(d.record.deployed - d.record.submitted,
                            {**tags, "camera": str(d.record.camera)})
        if out:
            self._jobs.inc(len(out), tags)
        self._queue.set(len(self.strategy.pending), tags)
        return out

    def stats(self) -> tuple[int, float, list[str]]:
        """Frames uploaded, teacher GPU-seconds, and jobs that failed for good."""
        return self.server.uploaded, self.server.label_gpu_s, list(self.train.failures)
