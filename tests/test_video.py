"""The real-video path: a small mp4 written here with OpenCV, read back by the loop."""
import csv

import cv2
import numpy as np
import pytest

from driftlab.platform.runner import run_inline
from driftlab.platform.world import CameraStream, VideoError, VideoFileSource, get_scenario

from conftest import SMALL_WORLD


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


def test_video_file_source_reads_frames_and_labels(video):
    path, labels, batch = video
    src = VideoFileSource(path, size=32, labels_csv=labels)
    assert src.num_frames == len(batch) and src.fps == pytest.approx(SMALL_WORLD.fps)
    fb = src.frames(0, 10)
    assert fb.images.shape == (10, 32, 32, 3) and fb.images.dtype == np.uint8
    # Lossy codec: close to the rendered frames, not equal.
    assert np.abs(fb.images.astype(int) - batch.images[:10]).mean() < 20
    assert fb.labels[0] == batch.labels[0] and fb.labels[1] == -1  # odd frames unlabelled
    assert src.frames(150, 999).images.shape[0] == 10


def test_missing_empty_corrupt_files_are_named(tmp_path):
    with pytest.raises(VideoError, match="not found: .*nothere.mp4"):
        VideoFileSource(str(tmp_path / "nothere.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty: .*empty.mp4"):
        VideoFileSource(str(empty))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="junk.mp4"):
        VideoFileSource(str(junk))


def test_bad_labels_file_is_named(video, tmp_path):
    path, _, _ = video
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,label\n0,car\n")
    with pytest.raises(VideoError, match="bad.csv"):
        VideoFileSource(path, size=32, labels_csv=str(bad))


def test_loop_runs_on_a_video_file(video, tiny_cfg, tmp_path):
    path, labels, _ = video
    cfg = tiny_cfg(source=path, source_labels=labels, cameras=1, duration=80.0,
                   strategies=["static", "periodic", "edgesync"])
    summary = run_inline(cfg, out_dir=str(tmp_path), progress=False, log=lambda *_: None)
    assert (summary.accuracy > 0).all()
    assert summary.set_index("strategy").loc["periodic", "jobs"] > 0
