"""The priority manager as a Ray actor: the server's side of a fleet.

It wraps :class:`~driftlab.platform.sim.FleetManager`: it receives the
cameras' uploads (as object references, fetched here from the camera actors),
keeps the queue, lets the strategy's training manager order and size jobs at
run time on the virtual GPU timeline, runs each scheduled batch on Ray Train
through a :class:`~driftlab.actors.trainer.TrainClient`, and returns the
deployments, their weights as object references for the camera actors. It
builds only the server half of a strategy. Ekya's micro-profiling trials run
here, in the manager's process.
"""
from __future__ import annotations

from typing import Callable

import ray
from ray.exceptions import ObjectLostError

from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student, default_device
from driftlab.platform.runner import set_determinism
from driftlab.platform.server import Deployment
from driftlab.platform.sim import FleetManager
from driftlab.platform.strategies import Strategy

from .trainer import TrainClient

__all__ = ["ManagerActor", "RayManager"]


@ray.remote
class ManagerActor:
    def __init__(self, cfg: SimConfig, student_states: list[ray.ObjectRef], train: TrainClient,
                 teacher_cvae: dict | None = None):
        from ray.util.metrics import Counter, Gauge

        set_determinism()
        self.train = train
        students = []
        for state in ray.get(list(student_states)):
            model = build_student(cfg.student, cfg.num_classes)
            model.load_state_dict(state)
            students.append(model.eval())
        self.fleet = FleetManager(cfg, students, default_device(), teacher_cvae, execute=train.run)
        self.name = ""
        self._queue = Gauge("driftlab_queue_length", "retraining requests waiting",
                            tag_keys=("strategy",))
        self._delay = Gauge("driftlab_update_delay_s",
                            "stream seconds from a job's request to its deployment",
                            tag_keys=("strategy", "camera"))
        self._jobs = Counter("driftlab_jobs", "models deployed, by kind: retrain (a job) or zoo",
                             tag_keys=("strategy", "kind"))

    def start(self, strategy: Strategy) -> None:
        """A fresh server state and the strategy's training manager."""
        self.name = strategy.name
        self.fleet.start(strategy)

    def submit(self, now: float, uploads: list) -> list[int]:
        """One upload round: a reference to each group's uploads, in camera
        order. Applied whole or not at all: the groups whose uploads were lost
        with their node are returned (the driver has them asked again)."""
        got, lost = [], []
        for i, ref in enumerate(uploads):
            try:
                got.append(ray.get(ref))
            except ObjectLostError:
                lost.append(i)
        if not lost:
            self.fleet.submit(now, got)
            self._queue.set(len(self.fleet.manager.pending), {"strategy": self.name})
        return lost

    def serve(self, until: float) -> list[Deployment]:
        """Run every job the strategy schedules before ``until``."""
        out = self.fleet.serve(until)
        tags = {"strategy": self.name}
        for d in out:
            if d.record.kind == "retrain":
                self._delay.set(d.record.deployed - d.record.submitted,
                                {**tags, "camera": str(d.record.camera)})
            self._jobs.inc(1, {**tags, "kind": d.record.kind})
            d.state = ray.put(d.state)
        self._queue.set(len(self.fleet.manager.pending), tags)
        return out

    def stats(self) -> tuple[int, float, list[str]]:
        """Frames uploaded, teacher GPU-seconds, and jobs that failed for good."""
        uploaded, label_gpu_s = self.fleet.stats()
        return uploaded, label_gpu_s, list(self.train.failures)


class RayManager:
    """The :class:`~driftlab.platform.sim.Manager` on the manager actor."""

    def __init__(self, actor, log: Callable[[str], None] = print):
        self.actor, self.log = actor, log

    def start(self, strategy: Strategy) -> None:
        self.name = strategy.name
        ray.get(self.actor.start.remote(strategy))

    def submit(self, now: float, uploads: list) -> None:
        """``uploads``: each group's :class:`~driftlab.actors.camera.Answer`."""
        while lost := ray.get(self.actor.submit.remote(now, [u.ref for u in uploads])):
            for i in lost:
                uploads[i].renew()

    def serve(self, until: float) -> list[Deployment]:
        return ray.get(self.actor.serve.remote(until))

    def stats(self) -> tuple[int, float]:
        uploaded, label_gpu_s, failures = ray.get(self.actor.stats.remote())
        for f in failures:
            self.log(f"{self.name}: {f}")
        return uploaded, label_gpu_s
