"""Recordings: a small mp4 written here, the real clips in ../shared/data/video/,
per-camera sources, weights files for the teacher and student, and bad input."""
import csv
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from driftlab.platform.config import ConfigError, ModelSpec, SimConfig, TeacherSpec, config_from_dict
from driftlab.platform.models import build_student, build_teacher
from driftlab.platform.runner import build_fleet, build_sources, run_inline
from driftlab.platform.training import TrainSpec, fit
from driftlab.platform.world import CameraStream, SourceSpec, VideoError, get_scenario, open_recording

from conftest import SMALL_WORLD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIPS = os.path.join(ROOT, "..", "shared", "data", "video")
CAR, PEOPLE = os.path.join(CLIPS, "car-detection.mp4"), os.path.join(CLIPS, "one-by-one-person-detection.mp4")
CLASSES = ("empty", "car", "person")
needs_clips = pytest.mark.skipif(not (os.path.exists(CAR) and os.path.exists(PEOPLE)),
                                 reason="real clips not in ../shared/data/video/")


def native(path: str) -> tuple[float, int]:
    cap = cv2.VideoCapture(path)
    try:
        return cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An mp4 of 160 synthetic frames (drifting day->night) and its labels CSV."""
    d = tmp_path_factory.mktemp("video")
    stream = CameraStream(SMALL_WORLD, get_scenario("day_night"), 0, 1, seed=2, duration=80)
    batch = stream.frames(0, stream.num_frames)
    path = str(d / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), SMALL_WORLD.fps, (32, 32))
    assert writer.isOpened()
    for img in batch.images:
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    labels = str(d / "labels.csv")
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "label"])
        w.writerows((i, int(y)) for i, y in enumerate(batch.labels) if i % 2 == 0)
    return path, labels, batch


def test_recording_reads_frames_and_labels(video):
    path, labels, batch = video
    classes = tuple(str(k) for k in range(SMALL_WORLD.num_classes))
    src = open_recording(SourceSpec(path, labels=labels), 0, SMALL_WORLD.fps, 32, 1000.0, classes)
    assert src.num_frames == len(batch) and src.native_fps == pytest.approx(SMALL_WORLD.fps)
    fb = src.frames(0, 10)
    assert fb.images.shape == (10, 32, 32, 3) and fb.images.dtype == np.uint8
    # Lossy codec: close to the rendered frames, not equal.
    assert np.abs(fb.images.astype(int) - batch.images[:10]).mean() < 20
    assert fb.labels[0] == batch.labels[0] and fb.labels[1] == -1  # odd frames unlabelled
    assert src.frames(150, 999).images.shape[0] == 10
    # Decoding follows the reader: back to the start, and a pickled copy, give the same frames.
    import pickle
    np.testing.assert_array_equal(src.frames(0, 3).images, fb.images[:3])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(src)).frames(4, 6).images, fb.images[4:6])


@needs_clips
def test_real_clip_is_read_at_the_stream_rate():
    fps, count = native(CAR)
    src = open_recording(SourceSpec(CAR), 0, 2.0, 32, 1000.0, CLASSES)
    # 12.5 fps read at 2 fps: the first frame at or after each half second.
    assert src.num_frames == math.floor((count - 1) / fps * 2.0) + 1
    batch = src.frames(0, src.num_frames)
    expected = [math.ceil(k / 2.0 * fps - 1e-6) for k in range(src.num_frames)]
    np.testing.assert_allclose(batch.times, np.array(expected) / fps)
    assert np.all(batch.times >= np.arange(src.num_frames) / 2.0 - 1e-9)
    # A start offset: its past lies before t=0; a length bounds what is played.
    late = open_recording(SourceSpec(PEOPLE, start=20.0, length=30.0), 1, 2.0, 32, 1000.0, CLASSES)
    assert late.past_frames == 40 and late.num_frames == 60
    assert late.frames(-40, 0).times[0] == pytest.approx(-20.0)
    assert late.frames(0, 1).times[0] == pytest.approx(0.0)
    # The run's duration also bounds it: only what is played is decoded.
    assert open_recording(SourceSpec(PEOPLE), 1, 2.0, 32, 12.0, CLASSES).num_frames == 24


@pytest.fixture(scope="module")
def own_models(tmp_path_factory):
    """A teacher (resnet18) and a student (mobilenet_v3_small) for three classes
    at 32 px, trained a few steps on frames of the real clips, saved as files."""
    d = tmp_path_factory.mktemp("models")
    frames, labels = [], []
    for y, path in ((1, CAR), (2, PEOPLE)):
        src = open_recording(SourceSpec(path, length=10.0), 0, 2.0, 32, 1000.0, CLASSES)
        frames.append(src.frames(0, 20).images)
        labels.append(np.full(20, y))
    images = np.concatenate(frames + [np.zeros((10, 32, 32, 3), np.uint8)])
    y = np.concatenate(labels + [np.zeros(10, int)])
    spec = ModelSpec("resnet18", input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    teacher = build_teacher(spec, 3)
    fit(teacher, images, y, TrainSpec(epochs=2, batch_size=16))
    student = build_student(ModelSpec("mobilenet_v3_small", input_size=32), 3)
    fit(student, images, y, TrainSpec(epochs=1, batch_size=16))
    paths = str(d / "teacher.pt"), str(d / "student.pt")
    torch.save(teacher.state_dict(), paths[0])
    torch.save(student.state_dict(), paths[1])
    labels_csv = d / "car.csv"
    fps, count = native(CAR)
    with open(labels_csv, "w", newline="", encoding="utf-8-sig") as f:   # a BOM, spaces: normal CSV
        f.write(" frame , label \n")
        for i in range(0, count, 5):
            f.write(f"{i},{'car' if (i // 5) % 2 else 0}\n")
    return {"teacher": paths[0], "student": paths[1], "labels": str(labels_csv)}


def fleet_cfg(own_models, **overrides) -> SimConfig:
    values = {
        "sources": [{"path": CAR, "labels": own_models["labels"]}, {"path": PEOPLE, "length": 40.0},
                    {"path": CAR, "start": 10.0}],
        "teacher": {"arch": "resnet18", "weights": own_models["teacher"], "classes": list(CLASSES),
                    "input_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "student": {"arch": "mobilenet_v3_small", "weights": own_models["student"], "input_size": 32},
        "duration": 120.0, "window": 20.0, "tick": 10.0, "warmup": 10.0, "fixed_epochs": 1,
        "strategies": ["static", "periodic", "edgesync"],
    }
    values.update(overrides)
    return config_from_dict(values)


@needs_clips
def test_fleet_of_real_clips_with_own_models(own_models, tmp_path):
    cfg = fleet_cfg(own_models)
    assert cfg.cameras == 3 and cfg.num_classes == 3 and cfg.frame_size == 32
    summary = run_inline(cfg, out_dir=str(tmp_path), progress=False, log=lambda *_: None)
    frames = pd.read_parquet(tmp_path / "frames.parquet")
    fleet = build_fleet(cfg, log=lambda *_: None)
    for camera, src in enumerate(fleet.sources):
        rows = frames[(frames.strategy == "static") & (frames.camera == camera)]
        assert len(rows) == src.num_frames   # each camera plays its whole recording
        idx = [src.native_index(k) for k in range(src.num_frames)]
        np.testing.assert_allclose(rows.t.values, np.array(idx) / src.native_fps - src.spec.start)
    # Camera 0's labels come from its CSV where it has one (every 5th native frame).
    fps, count = native(CAR)
    given = {i: 1 if (i // 5) % 2 else 0 for i in range(0, count, 5)}
    cam0 = frames[(frames.strategy == "static") & (frames.camera == 0)]
    ks = np.arange(len(cam0))
    for k, label in zip(ks, cam0.label.values):
        i = fleet.sources[0].native_index(int(k))
        if i in given:
            assert label == given[i]
    # Class names travel with the results.
    assert set(frames.label_name.dropna().unique()) <= set(CLASSES)
    assert (frames.label_name.astype(str) == [CLASSES[y] for y in frames.label]).all()
    for name in ("frames", "jobs", "summary"):
        meta = pq.read_schema(tmp_path / f"{name}.parquet").metadata
        assert json.loads(meta[b"driftlab.classes"]) == list(CLASSES)
    assert list(summary.strategy) == ["static", "periodic", "edgesync"]
    assert summary.set_index("strategy").loc["periodic", "jobs"] > 0


def test_loop_runs_on_a_video_file(video, tiny_cfg, tmp_path):
    path, labels, _ = video
    cfg = tiny_cfg(sources=[{"path": path, "labels": labels}], duration=80.0,
                   strategies=["static", "periodic", "edgesync"])
    summary = run_inline(cfg, out_dir=str(tmp_path), progress=False, log=lambda *_: None)
    assert (summary.accuracy > 0).all()
    assert summary.set_index("strategy").loc["periodic", "jobs"] > 0


def test_frame_directory_and_mixed_fleet(video, tiny_cfg, tmp_path):
    """A directory of images plays like a video; synthetic and recorded cameras share a fleet."""
    path, _, batch = video
    d = tmp_path / "frames"
    d.mkdir()
    for i, img in enumerate(batch.images[:60]):
        cv2.imwrite(str(d / f"{i:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cfg = tiny_cfg(sources=["synthetic", {"path": str(d), "fps": 4.0}], duration=40.0, window=10.0,
                   strategies=["static"])
    fleet = build_fleet(cfg, log=lambda *_: None)
    assert fleet.sources[1].num_frames == 30   # 60 images at 4 fps read at 2 fps
    np.testing.assert_array_equal(fleet.sources[1].frames(0, 3).images, batch.images[[0, 2, 4]])
    summary = run_inline(cfg, progress=False, log=lambda *_: None, fleet=fleet)
    assert summary.accuracy.iloc[0] > 0


# -- bad input: one clear error naming the camera and the file ------------------

def test_missing_empty_corrupt_files_are_named(tmp_path):
    empty, junk, nothing = tmp_path / "empty.mp4", tmp_path / "junk.mp4", tmp_path / "noimages"
    empty.write_bytes(b"")
    junk.write_bytes(b"this is not a video" * 100)
    nothing.mkdir()
    (nothing / "notes.txt").write_text("hi")
    for path, why in ((tmp_path / "nothere.mp4", "not found"), (empty, "empty"), (junk, "cannot be opened"),
                      (nothing, "no images")):
        with pytest.raises(VideoError, match=f"camera 2: .*{os.path.basename(path)}.*{why}"):
            open_recording(SourceSpec(str(path)), 2, 2.0, 32, 100.0, CLASSES)


def test_a_source_shorter_than_a_window_or_the_run_says_what_it_gives(tmp_path, tiny_cfg):
    fast = tmp_path / "fast.mp4"   # 240 frames whose header says 1000 fps: 0.24 s
    writer = cv2.VideoWriter(str(fast), cv2.VideoWriter_fourcc(*"mp4v"), 1000, (32, 32))
    for i in range(240):
        writer.write(np.full((32, 32, 3), i, np.uint8))
    writer.release()
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(VideoError, match=r"camera 0: .*fast.mp4: gives 0.5 s of stream \(the file: 240 frames at 1000 fps"
                                         r".*less than one retraining window \(40 s\)"):
        build_fleet(tiny_cfg(sources=[str(fast)]), log=lambda *_: None)
    with pytest.raises(VideoError, match="still.png: is a single image, not a video"):
        build_fleet(tiny_cfg(sources=[str(still)]), log=lambda *_: None)
    said = []
    build_sources(tiny_cfg(sources=[{"path": str(fast), "fps": 2.0}], window=10.0, duration=200.0), said.append)
    assert said == [f"warning: camera 0: {fast} gives 120 s of stream (the file: 240 frames at 2 fps; played from "
                    f"0 s at 2 fps), less than the run's 200 s; the camera stops there"]


@pytest.mark.parametrize("body, why", [
    ("frame,label,extra\n0,1,2\n", "columns must be 'frame,label'"),
    ("frame,label\n0,7\n", "label 7 outside the 3 classes"),
    ("frame,label\n0,truck\n", "label 'truck' is not a class"),
    ("frame,label\n-1,1\n", "negative frame -1"),
    ("frame,label\n3,1\n3,2\n", "frame 3 labelled both 1 and 2"),
    ("frame,label\n", "no labelled frame"),
    ("frame,label\n99999,1\n", "frame 99999 beyond the file's end"),
])
def test_bad_labels_file_is_named(video, tmp_path, body, why):
    path, _, _ = video
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    with pytest.raises(VideoError, match=f"camera 1: labels file .*bad.csv: .*{why}"):
        open_recording(SourceSpec(path, labels=str(bad)), 1, 2.0, 32, 100.0, CLASSES)


@needs_clips
def test_bad_models_are_named(own_models, tmp_path):
    student = tmp_path / "student-as-teacher.pt"
    torch.save(build_student("mobilenet_v3_small", 3).state_dict(), student)
    with pytest.raises(ValueError, match="do not fit ResNet: key 'conv1.weight' missing"):
        build_fleet(fleet_cfg(own_models, teacher={"weights": str(student), "classes": list(CLASSES),
                                                   "input_size": 32}), log=lambda *_: None)
    with pytest.raises(ValueError, match="class_map for 'person' points at output 3; .* has 3 outputs"):
        build_fleet(fleet_cfg(own_models, teacher={
            "weights": own_models["teacher"], "classes": ["other", "car", "person"], "class_map": [[0], [1], [3]],
            "input_size": 32}), log=lambda *_: None)
    with pytest.raises(ConfigError, match="sources"):
        fleet_cfg(own_models, cameras=5)


def test_class_map_regroups_a_larger_teacher(tmp_path):
    from driftlab.platform.models import load_teacher_weights, logits

    teacher = build_teacher("resnet18", 10)
    path = tmp_path / "t10.pt"
    torch.save(teacher.state_dict(), path)
    spec = TeacherSpec(weights=str(path), classes=("a", "b"), class_map=((0, 1, 2), (7,)))
    mapped = load_teacher_weights(spec, 2)
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), np.uint8)
    z10 = torch.tensor(logits(teacher.eval(), images)).log_softmax(1)
    np.testing.assert_allclose(logits(mapped, images),
                               torch.stack([z10[:, [0, 1, 2]].logsumexp(1), z10[:, 7]], 1).numpy(), atol=1e-5)
    scripted = tmp_path / "t10.ts"
    torch.jit.trace(teacher.eval(), torch.zeros(1, 3, 64, 64)).save(str(scripted))
    again = load_teacher_weights(TeacherSpec(weights=str(scripted), classes=("a", "b"),
                                             class_map=((0, 1, 2), (7,))), 2)
    np.testing.assert_allclose(logits(again, images), logits(mapped, images), atol=1e-4)


@needs_clips
def test_cli_takes_a_list_of_sources_and_names_a_bad_one(tmp_path):
    missing = str(tmp_path / "gone.mp4")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "drift_sim.py"), "--inline",
                        "--source", f"{CAR},{missing}", "--duration", "60"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: camera 1: {missing}: not found"]
