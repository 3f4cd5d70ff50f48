"""One Ray actor per edge camera, wrapping :class:`driftlab.platform.sim.Camera`.

The actor plays its stream, infers every frame with its student, runs the
strategy's filter and asks the Serve teacher (through a ``DeploymentHandle``)
to label its picks. It reports per-camera accuracy and uploads as Ray metrics.

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

from driftlab.platform.config import SimConfig
from driftlab.platform.models import build_student, default_device
from driftlab.platform.runner import set_determinism
from driftlab.platform.sim import Camera
from driftlab.platform.strategies import build_strategy
from driftlab.platform.world import FrameSource

__all__ = ["CameraActor", "CameraProxy", "STALE"]

STALE = "stale"  # answer to a call whose sequence number the actor did not expect
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
        self.strategy = None
        tags = ("camera", "strategy")
        self._accuracy = Gauge("driftlab_camera_accuracy", "accuracy of the camera's last tick",
                               tag_keys=tags)
        self._uploaded = Counter("driftlab_frames_uploaded", "frames a camera uploaded",
                                 tag_keys=tags)

    def call(self, seq: int, method: str, *args):
        if method == "start":  # a new strategy's log begins; so does a replay's
            self.calls = 0
        if seq != self.calls:
            return STALE
        out = getattr(self, f"_{method}")(*args)
        self.calls += 1
        return out

    def _start(self, strategy: str) -> None:
        """Begin a strategy's run: the initial student, the stream's start."""
        model = build_student(self.cfg.student, self.cfg.world.num_classes)
        model.load_state_dict(self.student_state)
        self.strategy = build_strategy(strategy, self.cfg)
        self.camera = Camera(self.index, self.source, model.to(self.device).eval(),
                             self.cfg.world.num_classes, detector=self.strategy.drift_detector(),
                             recalibrate=self.strategy.recalibration())

    def _deploy(self, t: float, version: int, state: dict) -> None:
        self.camera.deploy_at(t, version, state)

    def _run(self, until: float):
        log = self.camera.run(until)
        known = log.labels >= 0
        if known.any():
            self._accuracy.set(float((log.preds[known] == log.labels[known]).mean()), self._tags())
        return log

    def _upload(self, now: float):
        up = self.camera.upload(self.strategy, now, self._teach)
        if up is not None:
            self._uploaded.inc(len(up.images), self._tags())
        return up

    def _teach(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher's logits (and attention) over Serve; a replica restart is waited out."""
        for attempt in range(_LABEL_TRIES):
            try:
                return self.teacher.label.remote(images).result()
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

    def submit(self, method: str, *args) -> ray.ObjectRef:
        self.calls.append((method, args))
        return self.actor.call.remote(len(self.calls) - 1, method, *args)

    def result(self, ref: ray.ObjectRef):
        """The answer to the latest call, recovering the actor if it was lost."""
        while True:
            try:
                out = ray.get(ref)
                if not (isinstance(out, str) and out == STALE):
                    return out
            except RayActorError:
                pass
            self.recoveries += 1
            if self.recoveries > self.max_recoveries:
                raise RuntimeError(f"camera actor lost {self.recoveries} times; giving up")
            ref = self._replay()

    def _replay(self) -> ray.ObjectRef:
        """Replay every call but the last into the restarted actor, then resend the last."""
        while True:
            try:
                replies = ray.get([self.actor.call.remote(i, m, *a)
                                   for i, (m, a) in enumerate(self.calls[:-1])])
            except RayActorError:
                time.sleep(0.5)  # still restarting, or died again: start over
                continue
            if any(isinstance(r, str) and r == STALE for r in replies):
                raise RuntimeError("camera actor was not fresh when replayed")
            method, args = self.calls[-1]
            return self.actor.call.remote(len(self.calls) - 1, method, *args)
