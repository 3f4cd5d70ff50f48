"""The teacher as a Ray Serve deployment: labels the frames cameras upload.

Cameras call it through a ``DeploymentHandle`` (``handle.label.remote(frames)``,
frames an ``(N, H, W, 3)`` uint8 array); concurrent calls are gathered by
``@serve.batch`` and each labelled by its own forward pass, so a camera's
labels do not depend on who else asked. Outside clients use HTTP::

    curl -X POST --data-binary @frame.png http://127.0.0.1:8000/teacher
    {"label": 3, "confidence": 0.97}

The body is one encoded image (PNG, JPEG, anything OpenCV decodes), resized to
the world's frame size. A malformed body is a 400, an oversized one a 413; the
replica keeps serving either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ray import serve

from driftlab.platform.config import TeacherSpec
from driftlab.platform.models import default_device, from_logits, load_teacher_weights
from driftlab.platform.runner import set_determinism
from driftlab.platform.teacher import teach
from driftlab.platform.zoo import load_teacher_genkd

__all__ = ["TeacherOptions", "Teacher", "teacher_app", "deploy_teacher", "ROUTE", "APP_NAME"]

APP_NAME = "teacher"
QUIET = {"log_level": "WARNING", "enable_access_log": False}
ROUTE = "/teacher"


@dataclass(frozen=True)
class TeacherOptions:
    """How the teacher is served.

    Attributes:
        spec: the teacher (its ``weights`` set: a state_dict or TorchScript file).
        num_classes: the task's classes it scores.
        image_size: side of the square frames it labels (HTTP images are resized).
        replicas: Serve replicas.
        max_batch_size: most upload requests one batched call serves.
        batch_wait_timeout_s: how long a batch waits to fill.
        num_cpus: CPUs per replica (logical).
        num_gpus: GPUs per replica (fractions share one).
        max_body_bytes: largest HTTP body accepted.
        max_side: largest decoded image side accepted over HTTP.
        genkd_checkpoint: seed 2's head and CVAE on the teacher
            (:func:`driftlab.platform.zoo.teacher_genkd_checkpoint`); with it,
            labels come with the teacher's attention for genkd jobs.
    """

    spec: TeacherSpec
    num_classes: int = 6
    image_size: int = 64
    replicas: int = 1
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    max_body_bytes: int = 8 << 20
    max_side: int = 4096
    genkd_checkpoint: str | None = None


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@serve.deployment(name="Teacher", max_ongoing_requests=64, logging_config=QUIET)
class Teacher:
    def __init__(self, opts: TeacherOptions):
        set_determinism()   # the inline runner's threads: the same labels to the last bit
        self.opts = opts
        self.device = default_device()
        self.model = load_teacher_weights(opts.spec, opts.num_classes).to(self.device).eval()
        self.head = None if opts.genkd_checkpoint is None else load_teacher_genkd(
            opts.genkd_checkpoint, self.device)[0]
        self._label_batch.set_max_batch_size(opts.max_batch_size)
        self._label_batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)

    async def label(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Labels, confidences and logits of ``images`` (N, H, W, 3) uint8 (the
        logits let retraining jobs distil from the teacher's full output), and
        with a genkd head its attention."""
        return await self._label_batch(np.asarray(images, np.uint8))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _label_batch(self, requests: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        # Each upload is its own forward pass: a network's float sums change
        # with the batch it is in, so labelling requests together would make
        # a camera's numbers depend on which other cameras (or strategies)
        # asked at the same moment.
        out = []
        for images in requests:
            taught = teach(self.model, images, self.head, device=self.device)
            taught["labels"], taught["confidences"] = from_logits(taught["logits"])
            out.append(taught)
        return out

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        try:
            image = self._decode(await request.body() if request.method == "POST" else None)
        except HTTPError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        result = await self.label(image[None])
        return JSONResponse({"label": int(result["labels"][0]),
                             "confidence": float(result["confidences"][0])})

    def _decode(self, body: bytes | None) -> np.ndarray:
        import cv2

        if body is None:
            raise HTTPError(405, f"POST an encoded image to {ROUTE}")
        if not body:
            raise HTTPError(400, "empty body: POST an encoded image (PNG, JPEG, ...)")
        if len(body) > self.opts.max_body_bytes:
            raise HTTPError(413, f"body of {len(body)} bytes exceeds {self.opts.max_body_bytes}")
        bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise HTTPError(400, "body is not an image OpenCV can decode")
        if max(bgr.shape[:2]) > self.opts.max_side:
            raise HTTPError(413, f"image of {bgr.shape[1]}x{bgr.shape[0]} exceeds "
                                 f"{self.opts.max_side} px per side")
        size = self.opts.image_size
        return cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB)


def teacher_app(opts: TeacherOptions):
    """The Serve application; the weights are checked here, at deploy time,
    so bad ones fail with one message instead of replicas crash-looping."""
    if opts.spec.weights is None:
        raise ValueError("the Serve teacher needs its weights file (TeacherSpec.weights)")
    load_teacher_weights(opts.spec, opts.num_classes)
    return Teacher.options(
        num_replicas=opts.replicas,
        ray_actor_options={"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus},
    ).bind(opts)


def deploy_teacher(opts: TeacherOptions):
    """Deploy (or redeploy) the teacher; returns its ``DeploymentHandle``."""
    return serve.run(teacher_app(opts), name=APP_NAME, route_prefix=ROUTE)
