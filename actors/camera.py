"""Ray actors hosting groups of edge cameras, each wrapping a
:class:`driftlab.platform.camera.CameraGroup`.

An actor hosts a shard of the fleet's cameras (one process, one copy of
torch, for many cameras): it plays their streams, infers every frame with
their students, runs their strategy's camera policy and asks the Serve
teacher (through a ``DeploymentHandle``) to label their picks. It builds only
the camera half of a strategy (:meth:`Strategy.camera_policy`), from the
:class:`Strategy` value it is sent (so a strategy registered in the user's
own module needs no import here). It reports per-camera accuracy and uploads
as Ray metrics.

Every call answers ``(status, payload)`` as two objects: the driver reads the
small status and passes the payload on by reference (a group's uploads go to
the manager actor without passing through the driver, as an :class:`Answer`).

Crash recovery by deterministic replay: a group's state is a pure function of
the calls it received (start, deploy, run, upload), so the driver keeps that
call log (:class:`CameraProxy`) and, when the actor comes back from a restart
(its node lost, or the process killed), replays it before going on. The
restarted cameras resume at exactly the frame and model where the old ones
stopped; nothing already reported is redone. A payload lost with its node
before it was read is asked for again the same way (:meth:`CameraProxy.renew`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from driftlab.platform.camera import CameraGroup, build_camera
from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student, default_device
from driftlab.platform.runner import set_determinism
from driftlab.platform.server import Deployment
from driftlab.platform.strategies import Strategy
from driftlab.platform.world import FrameSource

__all__ = ["CameraGroupActor", "CameraProxy", "Answer", "RayCameras", "STALE"]

STALE = "stale"  # status of a call whose sequence number the actor did not expect
_OK = "ok"
_LABEL_WAIT_S = 300.0  # how long a camera waits out the teacher's replicas (restarts, a lost node)
_LABEL_TRIES = 8  # other failures (a replica's own error) are asked again this often


@ray.remote(max_restarts=-1, max_task_retries=0)
class CameraGroupActor:
    """A shard of edge cameras. Every call carries its position in the
    group's call log; a fresh (restarted) actor answers :data:`STALE` until replayed.

    Args:
        indices: the cameras' indices in the fleet.
        sources: references to their frame sources (one object for cameras sharing a file).
        student_states: references to their initial students' weights.
        cfg: the run's config.
        teacher: the Serve teacher's ``DeploymentHandle``.
    """

    def __init__(self, indices: list[int], sources: list[FrameSource], student_states: list[dict],
                 cfg: SimConfig, teacher):
        from ray.util.metrics import Counter, Gauge

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # handle chatter
        set_determinism()
        self.indices, self.cfg, self.teacher = list(indices), cfg, teacher
        self.sources: list[FrameSource] = ray.get(list(sources))
        self.student_states = list(student_states)  # fetched when a run starts, then dropped
        self.device = default_device()
        self.calls = 0
        self.group: CameraGroup | None = None
        self.strategy: Strategy | None = None
        tags = ("camera", "strategy")
        self._accuracy = Gauge("driftlab_camera_accuracy", "accuracy of the camera's last tick",
                               tag_keys=tags)
        self._uploaded = Counter("driftlab_frames_uploaded", "frames a camera uploaded",
                                 tag_keys=tags)

    def call(self, seq: int, method: str, *args) -> tuple[str, object]:
        if method == "start":  # a new strategy's log begins; so does a replay's
            self.calls = 0
        if seq != self.calls:
            return STALE, None
        out = getattr(self, f"_{method}")(*args)
        self.calls += 1
        return _OK, out

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        return ray.get_runtime_context().get_node_id()

    def _start(self, strategy: Strategy) -> None:
        """Begin a strategy's run: the initial students, the streams' start."""
        self.strategy = strategy
        cameras = []
        for i, source, state in zip(self.indices, self.sources, ray.get(self.student_states)):
            model = build_student(self.cfg.student, self.cfg.num_classes)
            model.load_state_dict(state)
            cameras.append(build_camera(strategy, self.cfg, i, source, model.to(self.device).eval(),
                                        lambda images: self._label_all([images])[0]))
        self.group = CameraGroup(cameras, label_all=lambda _cameras, images: self._label_all(images))

    def _deploy(self, camera: int, t: float, version: int, state: dict) -> None:
        self.group.deploy_at(camera, t, version, state)

    def _run(self, until: float):
        logs = self.group.run(until)
        for log in logs:
            known = log.labels >= 0
            if known.any():
                self._accuracy.set(float((log.preds[known] == log.labels[known]).mean()), self._tags(log.camera))
        return logs

    def _upload(self, now: float, tick: int):
        ups = self.group.upload(now, tick)
        for up in ups:
            if up is not None:
                self._uploaded.inc(len(up.images), self._tags(up.camera))
        return ups

    def _label_all(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The teacher's logits (and attention) on each camera's picks, asked
        over Serve all at once, as the inline teacher gives them (not the
        labels and confidences it adds for clients). Replicas lost (killed,
        their node gone) are waited out for up to :data:`_LABEL_WAIT_S`,
        other failures asked again :data:`_LABEL_TRIES` times (labelling is
        a pure function: asking again is safe)."""
        deadline, attempt = time.monotonic() + _LABEL_WAIT_S, 0
        while True:
            try:
                asked = [self.teacher.label.remote(im) for im in images]
                return [{k: v for k, v in a.result().items() if k not in ("labels", "confidences")}
                        for a in asked]
            except (RayActorError, RayTaskError, RuntimeError) as e:
                attempt += 1
                if time.monotonic() > deadline or (not isinstance(e, RayActorError) and attempt >= _LABEL_TRIES):
                    raise
                time.sleep(min(4.0, 0.5 * 2 ** attempt))

    def _tags(self, camera: int) -> dict[str, str]:
        return {"camera": str(camera), "strategy": self.strategy.name}


class CameraProxy:
    """The driver's side of one camera-group actor: sends calls, logs them,
    and replays the log into the actor after it restarts."""

    def __init__(self, actor, max_recoveries: int = 5):
        self.actor = actor
        self.calls: list[tuple[str, tuple]] = []
        self.recoveries = 0
        self.max_recoveries = max_recoveries

    def reset(self) -> None:
        self.calls = []

    def submit(self, method: str, *args) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        self.calls.append((method, args))
        return self._send(len(self.calls) - 1)

    def _send(self, i: int) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        method, args = self.calls[i]
        return self.actor.call.options(num_returns=2).remote(i, method, *args)

    def result(self, refs: tuple[ray.ObjectRef, ray.ObjectRef]) -> ray.ObjectRef:
        """The reference to the latest call's answer, recovering the actor if it was lost."""
        while True:
            status, payload = refs
            try:
                if ray.get(status) != STALE:
                    return payload
            except RayActorError:
                pass
            refs = self._recover()

    def renew(self) -> ray.ObjectRef:
        """The latest call's answer again, its object having been lost with
        its node: the restarted actor is replayed and asked again."""
        return self.result(self._recover())

    def _recover(self) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        self.recoveries += 1
        if self.recoveries > self.max_recoveries:
            raise RuntimeError(f"camera-group actor lost {self.recoveries} times; giving up")
        return self._replay()

    def _replay(self) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Replay every call but the last into the restarted actor, then resend the last."""
        while True:
            try:
                replies = ray.get([self._send(i)[0] for i in range(len(self.calls) - 1)])
            except RayActorError:
                time.sleep(0.5)  # still restarting, or died again: start over
                continue
            if STALE in replies:
                raise RuntimeError("camera-group actor was not fresh when replayed")
            return self._send(len(self.calls) - 1)


@dataclass
class Answer:
    """A group's answer to its latest call, by reference: what
    ``RayCameras.foreach(..., fetch=False)`` hands the manager."""

    ref: ray.ObjectRef
    proxy: CameraProxy

    def renew(self) -> None:
        """Ask the group again (the object was lost with its node)."""
        self.ref = self.proxy.renew()


class RayCameras:
    """The :class:`~driftlab.platform.sim.Cameras` of a fleet of camera-group
    actors: each call goes to every group at once.

    Args:
        proxies: one per group actor.
        shards: each group's camera indices (consecutive, in fleet order).
    """

    def __init__(self, proxies: list[CameraProxy], shards: list[range]):
        self.proxies, self.shards = proxies, shards
        self._group_of = {c: g for g, cams in enumerate(shards) for c in cams}

    def start(self, strategy: Strategy) -> None:
        for p in self.proxies:
            p.reset()
        self.foreach("start", strategy)

    def foreach(self, method: str, *args, fetch: bool = True) -> list:
        sent = [p.submit(method, *args) for p in self.proxies]
        answers = [Answer(p.result(refs), p) for p, refs in zip(self.proxies, sent)]
        if not fetch:
            return answers
        return [x for a in answers for x in (self._get(a) or [])]

    @staticmethod
    def _get(answer: Answer):
        while True:
            try:
                return ray.get(answer.ref)
            except ObjectLostError:
                answer.renew()

    def deploy(self, deployments: list[Deployment]) -> None:
        # The weights stay a reference (Ray resolves it in the actor); the
        # actor runs its calls in order, so they land before the next tick.
        for d in deployments:
            self.proxies[self._group_of[d.record.camera]].submit(
                "deploy", d.record.camera, d.record.deployed, d.version, d.state)

    @property
    def actors(self) -> list:
        return [p.actor for p in self.proxies]
