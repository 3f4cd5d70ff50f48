"""The model zoo: past models for conditions that come back.

A camera that adapted to night has forgotten the day; when the day returns,
retraining must win it back window by window. RECL (Khani et al., "RECL:
Responsive Resource-Efficient Continuous Learning for Video Analytics",
NSDI 2023) keeps the models it trained and, when a camera's scene matches
one of them, selects it instead of waiting for a new one. :class:`ModelZoo`
does that for any adapting strategy (``<name>+zoo``, settings
:class:`~driftlab.platform.config.ZooParams`), as a server plugin:

- **keys**: each model is stored with the mean condition
  (:func:`~driftlab.platform.scheduling.condition_stats`) of the camera's
  newest upload when it was made: a job's model under its request's upload,
  the camera's initial model under its first upload;
- **selection**: on each upload, the stored model nearest in condition, if
  within ``match_distance``, not the one the camera runs and already made
  (with ``shared``, another camera's job may not have finished yet), is
  checked against the teacher's labels of the upload's frames beside the
  camera's model, on the labelling GPU right after the labels (two student
  forward passes a frame, a third of a training sample-epoch each); if it is
  better by more than ``margin`` it is deployed at once: the check's end plus
  the downlink of the whole model, with no training, and never before a
  model still on its way to the camera (the server's copy already is that
  model, so the check compares with it);
- **after a swap**: the camera's requests from before it are withdrawn (no
  job serves them), and the strategy's retraining goes on from the zoo's
  model on the frames since the condition came back only: the camera's
  older uploads are of the condition it left, and a job on them would undo
  the swap. A miss leaves the camera to retraining; its next model, which
  did at least as well on the check, becomes the stored one of the
  condition;
- **bounds**: at most ``size`` models a camera; a new model within
  ``match_distance`` of a stored one replaces its weights (the refined model
  of that condition; the key stays where it was first stored, so a slow
  drift cannot drag a condition's key along with it), else it is added and,
  past ``size``, of the two stored models closest in condition the one whose
  condition fewer of the camera's uploads matched leaves (then the one used
  longer ago; the new one too): the zoo keeps the conditions the camera
  lived in, not the passing ones of a slow drift.

A camera whose first upload is already past a change keys its initial model
by the wrong condition; the label check keeps that from deploying a worse
model. After a swap the camera's jobs (and Ekya's micro-profiles) see its
frames since the swap only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .models import clone, predict
from .plugins import JobPlugin
from .scheduling import Samples
from .server import JobRecord

if TYPE_CHECKING:
    from .camera import Upload
    from .config import ZooParams
    from .scheduling import Request
    from .server import Server

__all__ = ["ZooEntry", "ModelZoo"]


@dataclass(eq=False)
class ZooEntry:
    """A stored model.

    Attributes:
        camera: the camera it was trained for.
        condition: the mean condition (6,) it was trained in.
        state: its weights.
        used: stream time it was last stored or deployed.
        available: stream time its weights exist (its job's deployment): no
            camera is given it earlier.
        support: uploads of its camera that matched its condition (its
            first included): how long the camera has lived in it.
    """

    camera: int
    condition: np.ndarray
    state: dict
    used: float
    available: float = 0.0
    support: int = 1

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.state.values())


class ModelZoo(JobPlugin):
    """The ``zoo`` server component (see the module docstring).

    Args:
        params: its settings.
        cameras: the fleet's size.

    Attributes:
        entries: each camera's stored models.
        current: the entry each camera's model is (or was refined from);
            ``None`` when its model is in no entry (the zoo evicted it at once).
        checks, hits: candidates checked, and deployed.
    """

    name = "zoo"
    columns = ("condition",)

    def __init__(self, params: ZooParams, cameras: int):
        self.p = params
        self.entries: list[list[ZooEntry]] = [[] for _ in range(cameras)]
        self.current: list[ZooEntry | None] = [None] * cameras
        self.checks = self.hits = 0
        self.since = [0.0] * cameras   # a camera's jobs read its uploads from here on
        self._scratch = None

    def after_upload(self, server: Server, upload: Upload, request: Request) -> None:
        cam, now = upload.camera, request.cutoff
        if not len(upload.images):
            return
        condition = server.stores[cam].newest(now).columns["condition"].mean(axis=0)
        if not self.entries[cam] and server.versions[cam] == 0:
            self._store(cam, condition, server.models[cam].state_dict(), now, available=0.0)
            return
        own = self.nearest(cam, condition, shared=False)
        if own is not None:
            own.support += 1
        candidate = self.nearest(cam, condition, ready_by=request.ready)
        if candidate is None or candidate is self.current[cam]:
            return
        self.checks += 1
        costs = server.cfg.costs
        start = max(server.teacher_free_at, request.ready)
        end = server.charge_teacher(start, 2 * len(upload.images) * costs.train_s_per_sample_epoch / 3)
        labels = upload.taught["logits"].argmax(axis=1)
        ours = (predict(server.models[cam], upload.images)[0] == labels).mean()
        theirs = (predict(self._model(server, candidate.state), upload.images)[0] == labels).mean()
        if theirs <= ours + self.p.margin:
            return
        self.hits += 1
        candidate.used = now
        self.current[cam] = candidate
        request.est_accuracy = float(theirs)   # the model the camera will run
        # After any model still on its way to the camera, which the server's copy already is.
        deployed = max(end + server.downlink_s(cam, 1.0), server.deployed_at[cam])
        self.since[cam] = float(upload.times.min())
        server.swap(cam, candidate.state, JobRecord(cam, now, start, end, deployed, len(upload.images), 0, 0.0,
                                                    kind="zoo"))

    def extend(self, server: Server, camera: int, samples: Samples, cutoff: float, start: float) -> Samples:
        keep = samples.times >= self.since[camera]
        return samples if keep.all() else samples.subset(np.flatnonzero(keep))

    def new_model(self, server: Server, camera: int, state: dict, cutoff: float, deployed: float) -> None:
        newest = server.stores[camera].newest(cutoff).columns.get("condition")
        if newest is None or not len(newest):
            self.current[camera] = None
            return
        self._store(camera, newest.mean(axis=0), state, cutoff, available=deployed)

    def nearest(self, camera: int, condition: np.ndarray, shared: bool | None = None,
                ready_by: float = np.inf) -> ZooEntry | None:
        """The stored model nearest ``condition`` within ``match_distance``
        and available by ``ready_by``: the camera's own, or with ``shared``
        (default: the setting) the fleet's; ties go to the camera's own,
        then the older entry."""
        shared = self.p.shared if shared is None else shared
        pool = [e for c, es in enumerate(self.entries) if c == camera or shared for e in es
                if e.available <= ready_by]
        ranked = sorted((float(np.linalg.norm(e.condition - condition)), e.camera != camera, i)
                        for i, e in enumerate(pool))
        return pool[ranked[0][2]] if ranked and ranked[0][0] <= self.p.match_distance else None

    def memory_bytes(self) -> int:
        """What the zoo holds now, in bytes."""
        return sum(e.nbytes for es in self.entries for e in es)

    def _store(self, camera: int, condition: np.ndarray, state: dict, now: float, available: float) -> None:
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
        own = self.entries[camera]
        same = [e for e in own if np.linalg.norm(e.condition - condition) <= self.p.match_distance]
        if same:   # the refined model of a condition; its key stays, or a slow drift would drag it along
            entry = min(same, key=lambda e: np.linalg.norm(e.condition - condition))
            entry.state, entry.used, entry.available = state, now, available
        else:
            entry = ZooEntry(camera, condition, state, now, available)
            own.append(entry)
            if len(own) > self.p.size:   # of the two closest conditions, the one lived in less leaves
                pairs = [(float(np.linalg.norm(a.condition - b.condition)), i, j)
                         for i, a in enumerate(own) for j, b in enumerate(own) if i < j]
                _, i, j = min(pairs)
                gone = own.pop(min((i, j), key=lambda k: (own[k].support, own[k].used)))
                if gone is entry:
                    entry = None
        self.current[camera] = entry

    def _model(self, server: Server, state: dict):
        if self._scratch is None:   # one model to load candidates into (the fleet shares an architecture)
            self._scratch = clone(server.models[0])
        self._scratch.load_state_dict(state)
        return self._scratch.eval()
