"""The teacher as a Ray Serve deployment: labels the frames cameras upload.

Cameras call it through a ``DeploymentHandle`` (``handle.label.remote(frames)``,
frames an ``(N, H, W, 3)`` uint8 array); concurrent calls are gathered by
``@serve.batch`` and each labelled by its own forward pass, so a camera's
labels do not depend on who else asked. Outside clients use HTTP::

    curl -X POST --data-binary @frame.png http://127.0.0.1:8000/teacher
    {"label": 3, "confidence": 0.97}

The body is one encoded image (PNG, JPEG, WebP, anything Pillow reads; EXIF
orientation applied, grey and alpha made RGB), resized to the world's frame
size. A malformed body is a 400 and an oversized one a 413, each with a JSON
``{"error": ...}``. The size an image declares is checked from its header
before any pixel is decoded (a few hundred bytes of PNG can declare 20000 x
20000 pixels), and decoding runs off the replica's event loop, so bad bodies
never hold up the cameras' labelling on the same replica.
"""
from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import numpy as np
from ray import serve

from driftlab.platform.config import TeacherSpec
from driftlab.platform.models import default_device, from_logits, load_teacher_weights
from driftlab.platform.runner import set_determinism
from driftlab.platform.teacher import teach
from driftlab.platform.pretrained import load_teacher_genkd

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
        max_side: largest image side accepted over HTTP (read from the header).
        max_pixels: largest image area accepted over HTTP (read from the header).
        genkd_checkpoint: seed 2's head and CVAE on the teacher
            (:func:`driftlab.platform.pretrained.teacher_genkd_checkpoint`); with it,
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
    max_pixels: int = 4096 * 3072
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
            if request.method != "POST":
                raise HTTPError(405, f"POST an encoded image to {ROUTE}")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.opts.max_body_bytes:
                raise HTTPError(413, f"body of {declared} bytes exceeds {self.opts.max_body_bytes}")
            image = await asyncio.get_running_loop().run_in_executor(None, self._decode, await request.body())
        except HTTPError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        result = await self.label(image[None])
        return JSONResponse({"label": int(result["labels"][0]),
                             "confidence": float(result["confidences"][0])})

    def _decode(self, body: bytes) -> np.ndarray:
        """An (image_size, image_size, 3) uint8 RGB frame from an encoded image;
        :class:`HTTPError` for anything else, before decoding where the header tells."""
        import cv2
        from PIL import Image, ImageOps, UnidentifiedImageError

        if not body:
            raise HTTPError(400, "empty body: POST an encoded image (PNG, JPEG, ...)")
        if len(body) > self.opts.max_body_bytes:
            raise HTTPError(413, f"body of {len(body)} bytes exceeds {self.opts.max_body_bytes}")
        try:
            with Image.open(io.BytesIO(body)) as im:   # reads the header only
                w, h = im.size
                if max(w, h) > self.opts.max_side or w * h > self.opts.max_pixels:
                    raise HTTPError(413, f"image of {w}x{h} exceeds {self.opts.max_side} px per side or "
                                         f"{self.opts.max_pixels} pixels")
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except HTTPError:
            raise
        except Image.DecompressionBombError as e:   # declares more pixels than Pillow opens at all
            raise HTTPError(413, str(e)) from None
        except UnidentifiedImageError:
            raise HTTPError(400, "body is not an image Pillow can read (PNG, JPEG, WebP, ...)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:   # truncated or corrupt data
            raise HTTPError(400, f"image data is corrupt or truncated: {e}") from None
        except Exception as e:   # a format plugin's own failure on malformed data: still the body's fault
            raise HTTPError(400, f"image data is malformed: {type(e).__name__}: {e}") from None
        if min(rgb.shape[:2]) == 0:
            raise HTTPError(400, "image has no pixels")
        size = self.opts.image_size
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


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
