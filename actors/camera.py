"""One Ray actor per edge camera, wrapping :class:`driftlab.platform.camera.Camera`.

The actor plays its stream, infers every frame with its student, runs its
strategy's camera policy and asks the Serve teacher (through a
``DeploymentHandle``) to label its picks. It builds only the camera half of a
strategy (:meth:`Strategy.camera_policy`), from the :class:`Strategy` value
it is sent (so a strategy registered in the user's own module needs no import
here). It reports per-camera accuracy and uploads as Ray metrics.

Every call answers ``(status, payload)`` as two objects: the driver reads the
small status and passes the payload on by reference (an upload goes to the
manager actor without passing through the driver).

Crash recovery by deterministic replay: a camera's state is a pure function of
the calls it received (start, deploy, run, upload), so the driver keeps that
call log (:class:`CameraProxy`) and, when the actor comes back from a restart,
replays it before going on. The restarted camera resumes at exactly the frame
and model where the old one stopped; nothing already reported is redone.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from driftlab.platform.camera import Camera, build_camera
from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student, default_device
from driftlab.platform.runner import set_determinism
from driftlab.platform.server import Deployment
from driftlab.platform.strategies import Strategy
from driftlab.platform.world import FrameSource

__all__ = ["CameraActor", "CameraProxy", "RayCameras", "STALE"]

STALE = "stale"  # status of a call whose sequence number the actor did not expect
_OK = "ok"
_LABEL_TRIES = 8


@ray.remote(max_restarts=-1, max_task_retries=0)
class CameraActor:
    """An edge camera. Every call carries its position in the camera's call
    log; a fresh (restarted) actor answers :data:`STALE` until replayed."""

    def __init__(self, index: int, source: FrameSource, student_state: dict, cfg: SimConfig,
                 teacher):
        from ray.util.metrics import Counter, Gauge

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # handle chatter
        set_determinism()
        self.index, self.source, self.cfg, self.teacher = index, source, cfg, teacher
        self.student_state = student_state
        self.device = default_device()
        self.calls = 0
        self.camera: Camera | None = None
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

    def _start(self, strategy: Strategy) -> None:
        """Begin a strategy's run: the initial student, the stream's start."""
        model = build_student(self.cfg.student, self.cfg.world.num_classes)
        model.load_state_dict(self.student_state)
        self.strategy = strategy
        self.camera = build_camera(strategy, self.cfg, self.index, self.source,
                                   model.to(self.device).eval(), self._teach)

    def _deploy(self, t: float, version: int, state: dict) -> None:
        self.camera.deploy_at(t, version, state)

    def _run(self, until: float):
        log = self.camera.run(until)
        known = log.labels >= 0
        if known.any():
            self._accuracy.set(float((log.preds[known] == log.labels[known]).mean()), self._tags())
        return log

    def _upload(self, now: float, tick: int):
        up = self.camera.upload(now, tick)
        if up is not None:
            self._uploaded.inc(len(up.images), self._tags())
        return up

    def _teach(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher's logits (and attention) over Serve, as the inline
        teacher gives them (not the labels and confidences it adds for
        clients); a replica restart is waited out."""
        for attempt in range(_LABEL_TRIES):
            try:
                out = self.teacher.label.remote(images).result()
                return {k: v for k, v in out.items() if k not in ("labels", "confidences")}
            except (RayActorError, RayTaskError, RuntimeError):
                if attempt == _LABEL_TRIES - 1:
                    raise
                time.sleep(min(4.0, 0.5 * 2 ** attempt))

    def _tags(self) -> dict[str, str]:
        return {"camera": str(self.index), "strategy": self.strategy.name}


class CameraProxy:
    """The driver's side of one camera actor: sends calls, logs them, and
    replays the log into the actor after it restarts."""

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
            self.recoveries += 1
            if self.recoveries > self.max_recoveries:
                raise RuntimeError(f"camera actor lost {self.recoveries} times; giving up")
            refs = self._replay()

    def _replay(self) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Replay every call but the last into the restarted actor, then resend the last."""
        while True:
            try:
                replies = ray.get([self._send(i)[0] for i in range(len(self.calls) - 1)])
            except RayActorError:
                time.sleep(0.5)  # still restarting, or died again: start over
                continue
            if STALE in replies:
                raise RuntimeError("camera actor was not fresh when replayed")
            return self._send(len(self.calls) - 1)


class RayCameras:
    """The :class:`~driftlab.platform.sim.Cameras` of a fleet of camera actors:
    each call goes to every actor at once."""

    def __init__(self, proxies: list[CameraProxy]):
        self.proxies = proxies

    def start(self, strategy: Strategy) -> None:
        for p in self.proxies:
            p.reset()
        self.foreach("start", strategy)

    def foreach(self, method: str, *args, fetch: bool = True) -> list:
        sent = [p.submit(method, *args) for p in self.proxies]
        payloads = [p.result(refs) for p, refs in zip(self.proxies, sent)]
        return ray.get(payloads) if fetch else payloads

    def deploy(self, deployments: list[Deployment]) -> None:
        # The weights stay a reference (Ray resolves it in the actor); the
        # actor runs its calls in order, so they land before the next tick.
        for d in deployments:
            self.proxies[d.record.camera].submit("deploy", d.record.deployed, d.version, d.state)

    @property
    def actors(self) -> list:
        return [p.actor for p in self.proxies]
