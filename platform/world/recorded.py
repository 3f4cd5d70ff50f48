"""Recordings a camera plays: a video file or a directory of frames, read at
the fleet's stream rate from their native rate.

Stream frame ``k`` of a recording that starts ``start`` seconds in is the
first native frame at or after ``start + k / stream_fps``: a 30 fps file read
at 2 fps gives every 15th frame, a 12.5 fps one frames 0, 7, 13, 19, ...
Its timestamp is that frame's own (``index / native_fps - start``). Frames
before ``start`` are the camera's past (its initial student trains on them).
Only what is read is decoded, one frame at a time: a run that plays 60 s of
an hour-long file decodes 60 s of it.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..validation import ConfigError, check_non_negative, check_positive

__all__ = ["SourceSpec", "RecordedSource", "VideoError", "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS",
           "open_recording", "expand_source_arg"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SYNTHETIC = "synthetic"
_SEEK_S = 10.0   # forward jumps longer than this seek instead of decoding through


class VideoError(ConfigError):
    """A recording (or its labels) cannot be used; the message names the camera and the file."""


@dataclass(frozen=True)
class SourceSpec:
    """What one camera plays (an entry of ``SimConfig.sources``).

    Attributes:
        path: a video file, a directory of frames (read in name order), or
            ``synthetic`` for the synthetic world's stream of this camera.
        fps: native frame rate of a directory of frames (default: the stream
            rate, every image one stream frame); for a video file it replaces
            the rate its header gives.
        labels: CSV with columns ``frame,label``: ``frame`` a native frame
            index (0-based, the file's own numbering), ``label`` a class index
            or name. Frames it does not list are labelled by the teacher.
        start: seconds into the recording where stream time 0 is; what lies
            before is the camera's past.
        length: seconds played from ``start`` (default: to the end).
    """

    path: str = SYNTHETIC
    fps: float | None = None
    labels: str | None = None
    start: float = 0.0
    length: float | None = None

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"a source's path must be a file or directory name, got {self.path!r}")
        check_non_negative(self, "start")
        if self.fps is not None:
            check_positive(self, "fps")
        if self.length is not None:
            check_positive(self, "length")
        if self.synthetic and (self.fps or self.labels or self.start or self.length):
            raise ConfigError("a synthetic source takes no fps, labels, start or length")

    @property
    def synthetic(self) -> bool:
        return self.path == SYNTHETIC


def expand_source_arg(text: str) -> list[str]:
    """``--source``: a file, a comma-separated list, or a directory of video
    files (one camera each, in name order; a directory of images is one camera)."""
    paths = [p.strip() for p in text.split(",") if p.strip()]
    if len(paths) == 1 and os.path.isdir(paths[0]):
        names = sorted(os.listdir(paths[0]))
        videos = [n for n in names if n.lower().endswith(VIDEO_EXTENSIONS)]
        if videos:
            return [os.path.join(paths[0], n) for n in videos]
    return paths


class RecordedSource:
    """A camera's recording at the stream rate (a :class:`~driftlab.platform.world.FrameSource`).

    Args:
        spec: what to play.
        camera: the camera's index (named in every error).
        stream_fps: the fleet's stream rate; the recording's native rate must
            be at least this.
        size: frames come out ``size`` x ``size`` RGB: the shorter side
            resized to ``size``, the centre cropped (torchvision's
            classification transform).
        duration: the most stream seconds the run plays.
        classes: the task's class names (labels CSV entries may use them).

    Raises:
        VideoError: the file is missing, empty, unreadable or too slow, or its
            labels CSV is malformed (the message names the camera and file).
    """

    def __init__(self, spec: SourceSpec, camera: int, stream_fps: float, size: int, duration: float,
                 classes: tuple[str, ...]):
        self.spec, self.camera, self.fps, self.size = spec, camera, float(stream_fps), int(size)
        self.path = spec.path
        self._cap = None
        self._next = 0
        if os.path.isdir(spec.path):
            self._files = sorted(n for n in os.listdir(spec.path) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not self._files:
                raise self._error(f"directory has no images ({', '.join(IMAGE_EXTENSIONS)})")
            native_fps, self.native_frames = spec.fps or self.fps, len(self._files)
        else:
            self._files = None
            native_fps, self.native_frames = self._probe_video()
            native_fps = spec.fps or native_fps
        self.native_fps = float(native_fps)
        if self.native_fps < self.fps - 1e-9:
            raise self._error(f"plays at {self.native_fps:g} fps, below the stream rate "
                              f"({self.fps:g} fps): lower world.fps or set the source's fps")
        available = self.native_frames / self.native_fps - spec.start
        if available <= 0:
            raise self._error(f"start ({spec.start:g} s) is past the recording's end "
                              f"({self.native_frames / self.native_fps:.1f} s)")
        played = min(available, spec.length or math.inf, duration)
        self.num_frames = sum(1 for _ in self._stream_range(played))
        self.past_frames = int(math.floor(spec.start * self.fps + 1e-9))
        self.labels = np.full(self.past_frames + self.num_frames, -1, np.int64)
        if spec.labels is not None:
            self._read_labels(spec.labels, classes)

    # -- FrameSource ---------------------------------------------------------
    def frames(self, start: int, stop: int):
        """Stream frames ``start`` to ``stop`` (negative: the past before
        ``spec.start``), clipped to what the recording has."""
        from .stream import FrameBatch

        start, stop = max(start, -self.past_frames), min(stop, self.num_frames)
        ks = np.arange(start, max(start, stop))
        idx = np.array([self.native_index(int(k)) for k in ks], np.int64)
        images = np.stack([self._read(int(i)) for i in idx]) if len(idx) else \
            np.empty((0, self.size, self.size, 3), np.uint8)
        return FrameBatch(images, self.labels[ks + self.past_frames].copy(),
                          idx / self.native_fps - self.spec.start)

    def drifted(self, times: np.ndarray) -> np.ndarray:
        return np.zeros(len(times), bool)   # unknown for a recording

    def native_index(self, k: int) -> int:
        """The native frame index of stream frame ``k``."""
        return int(math.ceil((self.spec.start + k / self.fps) * self.native_fps - 1e-6))

    def set_unknown_labels(self, labels: np.ndarray) -> None:
        """Labels for the frames the CSV does not give (in stream order, past first)."""
        unknown = self.labels < 0
        self.labels[unknown] = np.asarray(labels)[unknown]

    @property
    def key(self) -> tuple:
        """What identifies the frames it gives (for caches)."""
        st = os.stat(self.path)
        return ("recorded", os.path.abspath(self.path), st.st_mtime_ns, st.st_size, self.spec.start,
                self.native_fps, self.fps, self.size)

    @property
    def stream_seconds(self) -> float:
        """Stream seconds the run plays of it."""
        return self.num_frames / self.fps

    def check_length(self, window: float, duration: float, log: Callable[[str], None] = print) -> None:
        """A :class:`VideoError` when the run plays less than one retraining
        ``window`` of it (no job could ever run), a warning when less than
        ``duration`` (the camera stops early), both saying what it gives."""
        n, length = self.native_frames, f", length {self.spec.length:g} s" if self.spec.length else ""
        gives = (f"gives {self.stream_seconds:g} s of stream (the file: {n} frame{'s' * (n != 1)} at "
                 f"{self.native_fps:g} fps; played from {self.spec.start:g} s{length} at {self.fps:g} fps)")
        if self.stream_seconds < window - 1e-9:
            raise self._error(f"{gives}, less than one retraining window ({window:g} s), so no job "
                              f"could ever train on it: check its frame rate (the source's fps), start "
                              f"and length, or set a shorter window in a config")
        if self.stream_seconds < duration - 1e-9 and not self.spec.length:
            log(f"warning: camera {self.camera}: {self.path} {gives}, less than the run's {duration:g} s; "
                f"the camera stops there")

    # -- reading -------------------------------------------------------------
    def _stream_range(self, seconds: float):
        k = 0
        while True:
            i = self.native_index(k)
            if i >= self.native_frames or k / self.fps >= seconds - 1e-9:
                return
            yield k
            k += 1

    def _error(self, what: str) -> VideoError:
        return VideoError(f"camera {self.camera}: {self.path}: {what}")

    def _probe_video(self) -> tuple[float, int]:
        if not os.path.exists(self.path):
            raise self._error("not found")
        if self.path.lower().endswith(IMAGE_EXTENSIONS):
            raise self._error("is a single image, not a video: put a recording's frames in a directory "
                              "and give the directory")
        if os.path.getsize(self.path) == 0:
            raise self._error("file is empty")
        cap = cv2.VideoCapture(self.path)
        try:
            if not cap.isOpened():
                raise self._error("cannot be opened as a video (corrupt or unsupported format)")
            fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, _ = cap.read()
        finally:
            cap.release()
        if not ok:
            raise self._error("no frame could be decoded (corrupt?)")
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise self._error("its header gives no frame rate: set the source's fps")
        return fps, max(count, 1)

    def _read(self, i: int) -> np.ndarray:
        if self._files is not None:
            name = os.path.join(self.path, self._files[i])
            frame = cv2.imread(name, cv2.IMREAD_COLOR)
            if frame is None:
                raise VideoError(f"camera {self.camera}: {name}: cannot be read as an image")
            return self._fit(frame)
        if self._cap is None or i < self._next:
            self._open(i)
        elif i - self._next > _SEEK_S * self.native_fps:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            self._next = i
        while self._next < i:
            self._cap.grab()
            self._next += 1
        ok, frame = self._cap.read()
        self._next += 1
        if not ok:
            raise self._error(f"frame {i} cannot be decoded (the file is shorter than its "
                              f"header's {self.native_frames} frames, or corrupt)")
        return self._fit(frame)

    def _open(self, i: int) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(self.path)
        self._next = 0
        if i > _SEEK_S * self.native_fps:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            self._next = i

    def _fit(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
        y, x = (nh - self.size) // 2, (nw - self.size) // 2
        return cv2.cvtColor(img[y:y + self.size, x:x + self.size], cv2.COLOR_BGR2RGB)

    def _read_labels(self, path: str, classes: tuple[str, ...]) -> None:
        def fail(what: str) -> VideoError:
            return VideoError(f"camera {self.camera}: labels file {path}: {what}")

        if not os.path.isfile(path):
            raise fail("not found")
        names = {c: k for k, c in enumerate(classes)}
        given: dict[int, int] = {}
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if sorted(header) != ["frame", "label"]:
                raise fail(f"columns must be 'frame,label', got {','.join(header) or 'nothing'}")
            col_frame, col_label = header.index("frame"), header.index("label")
            for line, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                try:
                    frame, text = int(row[col_frame]), row[col_label].strip()
                except (ValueError, IndexError):
                    raise fail(f"line {line}: frame must be an integer, got {row!r}") from None
                label = names.get(text)
                if label is None:
                    try:
                        label = int(text)
                    except ValueError:
                        raise fail(f"line {line}: label {text!r} is not a class "
                                   f"({', '.join(classes)}) nor an index") from None
                if not 0 <= label < len(classes):
                    raise fail(f"line {line}: label {label} outside the {len(classes)} classes")
                if frame < 0:
                    raise fail(f"line {line}: negative frame {frame}")
                if frame >= self.native_frames:
                    raise fail(f"line {line}: frame {frame} beyond the file's end "
                               f"({self.native_frames} frames)")
                if given.get(frame, label) != label:
                    raise fail(f"line {line}: frame {frame} labelled both {given[frame]} and {label}")
                given[frame] = label
        if not given:
            raise fail("no labelled frame (header only?)")
        for k in range(-self.past_frames, self.num_frames):
            self.labels[k + self.past_frames] = given.get(self.native_index(k), -1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cap"], state["_next"] = None, 0
        return state


def open_recording(spec: SourceSpec, camera: int, stream_fps: float, size: int, duration: float,
                   classes: tuple[str, ...]) -> RecordedSource:
    """:class:`RecordedSource`, with a directory that holds videos (not frames) named as such."""
    if os.path.isdir(spec.path) and not any(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(spec.path)) \
            and any(n.lower().endswith(VIDEO_EXTENSIONS) for n in os.listdir(spec.path)):
        raise VideoError(f"camera {camera}: {spec.path}: is a directory of videos; give each "
                         f"file its own camera (sources: [...] or --source DIR)")
    return RecordedSource(spec, camera, stream_fps, size, duration, classes)
