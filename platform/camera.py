"""An edge camera: plays its stream, infers every frame with its student, and
uploads the frames its policy picks for the teacher to label.

A :class:`Camera` holds its source, its student, its strategy's
:class:`~driftlab.platform.strategies.CameraPolicy`, its trigger and its
adapters (:mod:`driftlab.platform.adapters`); it knows no strategy by name.
The same object runs inline and inside a Ray camera-group actor
(:class:`CameraGroup`: a shard of cameras stepped together).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
from torch import nn

from .adapters import CameraAdapter, PeriodTrigger, camera_components
from .filters import Candidates, class_mix, mix_shift
from .models import predict, predict_stacked
from .scheduling import condition_stats
from .strategies import CameraPolicy

if TYPE_CHECKING:
    from .config import SimConfig
    from .strategies import Strategy
    from .world import FrameBatch, FrameSource

__all__ = ["Camera", "CameraGroup", "FrameLog", "Picked", "Upload", "Teach", "build_camera", "shard"]

Teach = Callable[[np.ndarray], dict]
"""The teacher: uint8 frames (N, H, W, 3) -> ``{"logits": (N, K), ...}``
(with genkd distillation also ``"attention"``: (N, D))."""


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
class Upload:
    """Frames a camera's filter picked with what the teacher said of them.

    Attributes:
        camera: the camera's index.
        images: uint8 (N, H, W, 3).
        times: stream seconds (N,).
        taught: the teacher's outputs, ``"logits"`` (N, K) and any others (N, ...).
        est_accuracy: agreement of the camera's predictions with the teacher's labels.
        mix_shift: change of its predicted class mix since the last upload.
        last_update: when it last received new weights.
        condition: mean :func:`condition_stats` of every frame it saw since its
            last upload, for a manager that reads it (else ``None``).
    """

    camera: int
    images: np.ndarray
    times: np.ndarray
    taught: dict[str, np.ndarray]
    est_accuracy: float
    mix_shift: float
    last_update: float
    condition: np.ndarray | None = None


@dataclass
class Picked:
    """Frames a camera's filter picked for the teacher: ``images`` (N, H, W, 3),
    their ``indices`` among the ``candidates``, and every frame it ``seen``
    since its last upload (M, H, W, 3)."""

    images: np.ndarray
    indices: np.ndarray
    candidates: Candidates
    seen: np.ndarray


class Camera:
    """An edge camera. Swaps in new weights at the exact stream time they arrive.

    Args:
        index: the camera's index in the fleet.
        source: its frames.
        student: its model (in eval mode, on its device).
        num_classes: classes the student predicts.
        policy: its strategy's camera half.
        trigger: when it uploads (default: every ``policy.period()``).
        adapters: what else it does each tick (e.g. the BatchNorm refit).
        teach: the teacher it asks to label its uploads.
        batch_size: frames per inference call.
    """

    def __init__(self, index: int, source: FrameSource, student: nn.Module, num_classes: int,
                 policy: CameraPolicy, trigger: PeriodTrigger | None = None,
                 adapters: list[CameraAdapter] = (), teach: Teach | None = None, batch_size: int = 256):
        self.index, self.source, self.model = index, source, student
        self.num_classes, self.batch_size = num_classes, batch_size
        self.policy, self.teach = policy, teach
        self.trigger = trigger or PeriodTrigger(policy.period(), policy.cfg.tick)
        self.adapters = list(adapters)
        self.version = 0
        self.last_update = 0.0
        self.last_upload = 0.0
        self.pending: list[tuple[float, int, dict]] = []   # (time, version, state)
        self.position = 0                                    # next frame index
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.prev_mix = np.full(num_classes, 1.0 / num_classes)

    def deploy_at(self, t: float, version: int, state: dict) -> None:
        """New weights ``state`` (model ``version``) arrive at stream time ``t``."""
        self.pending.append((t, version, state))
        self.pending.sort(key=lambda p: p[0])

    def run(self, until: float) -> FrameLog:
        """Infer every frame before stream time ``until``."""
        batch = self.next_frames(until)
        return self.record(batch, *self.infer(batch), until)

    def next_frames(self, until: float) -> FrameBatch:
        """The frames before stream time ``until`` not yet played; the models
        deployed by the first of them are swapped in."""
        stop = min(int(math.ceil(until * self.source.fps - 1e-9)), self.source.num_frames)
        batch = self.source.frames(self.position, stop)
        self.position = stop
        while self.pending and len(batch) and self.pending[0][0] <= batch.times[0]:
            self._swap()
        return batch

    def swaps_within(self, batch: FrameBatch) -> bool:
        """Whether a deployment lands between ``batch``'s first and last frame."""
        return bool(self.pending) and len(batch) > 0 and self.pending[0][0] <= batch.times[-1]

    def infer(self, batch: FrameBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictions, confidences and model versions of ``batch``'s frames,
        each frame by the model deployed by its time."""
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
        return preds, confs, versions

    def record(self, batch: FrameBatch, preds: np.ndarray, confs: np.ndarray, versions: np.ndarray,
               until: float) -> FrameLog:
        """Keep the tick's frames for the next upload, let the components see
        them, and log them."""
        self._buf.append((batch.images, batch.times, preds, confs))
        for component in (self.trigger, *self.adapters):
            component.observe(self, batch, confs, until)
        return FrameLog(self.index, batch.times, batch.labels, preds, confs, versions,
                        self.source.drifted(batch.times))

    def drop_frames(self) -> None:
        """Forget the frames buffered for the next upload."""
        self._buf = []

    def _swap(self) -> None:
        t, version, state = self.pending.pop(0)
        self.model.load_state_dict(state)
        self.model.eval()
        self.version, self.last_update = version, t
        for component in (self.trigger, *self.adapters):
            component.on_model(self)

    def upload(self, now: float, tick: int) -> Upload | None:
        """After tick ``tick`` (at stream time ``now``): if the trigger says so,
        the policy's filter picks frames buffered since the last upload,
        within its budget, and the teacher labels them; else ``None``."""
        picked = self.pick(now, tick)
        return None if picked is None else self.send(picked, self.teach(picked.images))

    def pick(self, now: float, tick: int) -> Picked | None:
        """:meth:`upload`'s first half: the frames to send, if any."""
        if not self.trigger.due(tick, now, self.last_upload):
            since = self.trigger.keep_since(now)
            if since is not None:
                self._buf = [b for b in self._buf if len(b[1]) and b[1][-1] >= since]
            return None
        self.last_upload = now
        images, cands = self._take_candidates()
        if len(cands) == 0:
            return None
        budget = self.policy.budget(len(cands))
        # One generator per (camera, upload): the same picks in any process.
        rng = np.random.default_rng((self.policy.cfg.seed, self.index, int(round(now * 10))))
        picks = self.policy.select(cands, budget, now, rng)
        if len(picks) == 0:
            return None
        return Picked(images[picks], picks, cands, images)

    def send(self, picked: Picked, taught: dict) -> Upload:
        """:meth:`upload`'s second half: the teacher's answer on the picks becomes the upload."""
        cands, picks = picked.candidates, picked.indices
        taught = {k: np.asarray(v) for k, v in taught.items()}
        taught["logits"] = taught["logits"].astype(np.float32, copy=False)
        labels = taught["logits"].argmax(axis=1)
        self.policy.observe_labels(labels)
        return Upload(self.index, picked.images, cands.times[picks], taught,
                      est_accuracy=float((cands.preds[picks] == labels).mean()),
                      mix_shift=mix_shift(class_mix(cands.preds, self.num_classes), cands.prev_mix),
                      last_update=self.last_update,
                      condition=condition_stats(picked.seen).mean(axis=0) if self.policy.send_condition else None)

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


class CameraGroup:
    """A shard of a fleet's cameras, stepped together: a Ray camera-group
    actor hosts one, the inline runner one for the whole fleet.

    On a GPU, the students of one architecture infer a tick's frames as one
    vectorised call (:func:`~driftlab.platform.models.predict_stacked`);
    cameras whose tick holds a deployment, or on a CPU, infer one by one (on a
    CPU the vectorised call is no faster and its float sums differ in the
    last bits, so a camera's numbers would depend on its group).

    Args:
        cameras: the shard, in fleet order.
        vectorize: stack students (default: when they run on a GPU).
        label_all: the teacher's answers on several cameras' picks, each
            labelled on its own (default: each camera's ``teach``, in turn;
            the Ray actor asks the Serve teacher for all at once).
    """

    def __init__(self, cameras: list[Camera], vectorize: bool | None = None,
                 label_all: Callable[[list[Camera], list[np.ndarray]], list[dict]] | None = None):
        self.cameras = list(cameras)
        self.label_all = label_all or (lambda cams, images: [c.teach(im) for c, im in zip(cams, images)])
        self._by_index = {c.index: c for c in self.cameras}
        if vectorize is None:
            vectorize = bool(self.cameras) and next(self.cameras[0].model.parameters()).is_cuda
        self.vectorize = vectorize

    def run(self, until: float) -> list[FrameLog]:
        """Each camera's :meth:`Camera.run`, in order."""
        batches = [c.next_frames(until) for c in self.cameras]
        inferred: dict[int, tuple] = {}
        if self.vectorize:
            together = defaultdict(list)  # same architecture and frame count: one call
            for i, (c, b) in enumerate(zip(self.cameras, batches)):
                if len(b) and not c.swaps_within(b):
                    together[type(c.model), len(b)].append(i)
            for idx in together.values():
                if len(idx) > 1:
                    preds, confs = predict_stacked([self.cameras[i].model for i in idx],
                                                   np.stack([batches[i].images for i in idx]))
                    for k, i in enumerate(idx):
                        inferred[i] = preds[k], confs[k], np.full(len(batches[i]), self.cameras[i].version)
        return [c.record(b, *(inferred.get(i) or c.infer(b)), until)
                for i, (c, b) in enumerate(zip(self.cameras, batches))]

    def upload(self, now: float, tick: int) -> list[Upload | None]:
        """Each camera's :meth:`Camera.upload`, in order; the teacher's answers
        asked for all at once (``label_all``)."""
        picked = [c.pick(now, tick) for c in self.cameras]
        asked = [(c, p) for c, p in zip(self.cameras, picked) if p is not None]
        answers = iter(self.label_all([c for c, _ in asked], [p.images for _, p in asked]))
        return [None if p is None else c.send(p, next(answers)) for c, p in zip(self.cameras, picked)]

    def deploy(self, deployments: list) -> None:
        """Each :class:`~driftlab.platform.server.Deployment` to its camera (all in this shard)."""
        for d in deployments:
            self.deploy_at(d.record.camera, d.record.deployed, d.version, d.state)

    def deploy_at(self, camera: int, t: float, version: int, state: dict) -> None:
        """:meth:`Camera.deploy_at` of camera ``camera`` (its index in the fleet)."""
        self._by_index[camera].deploy_at(t, version, state)


def shard(num_cameras: int, per_group: int) -> list[range]:
    """Camera indices ``0..num_cameras-1`` in consecutive groups of ``per_group`` (the last may be smaller)."""
    return [range(i, min(i + per_group, num_cameras)) for i in range(0, num_cameras, max(1, per_group))]


def build_camera(strategy: Strategy, cfg: SimConfig, index: int, source: FrameSource,
                 student: nn.Module, teach: Teach) -> Camera:
    """Camera ``index`` of a fleet running ``strategy``: its policy, trigger and adapters."""
    policy = strategy.camera_policy(cfg, index)
    trigger, adapters = camera_components(strategy, cfg, policy.period())
    return Camera(index, source, student, cfg.num_classes, policy, trigger, adapters, teach)
