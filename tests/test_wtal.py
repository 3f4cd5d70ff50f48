"""Weakly supervised localization: data, training from video labels, the experiment."""
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

from driftlab.platform.wtal.data import UntrimmedConfig, make_videos, segments_frame

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_videos_carry_video_labels_and_disjoint_segments():
    cfg = UntrimmedConfig(min_len=120, max_len=160)
    videos = make_videos(cfg, 10, seed=1)
    again = make_videos(cfg, 10, seed=1)
    for v, w in zip(videos, again):
        np.testing.assert_array_equal(v.features, w.features)  # a split is a function of its seed
        assert v.features.shape[1] == cfg.feature_dim and len(v.segments) >= 1
        assert set(np.flatnonzero(v.labels)) == {c for c, _, _ in v.segments}
        spans = sorted((s, e) for _, s, e in v.segments)
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))
    gt = segments_frame(videos)
    assert list(gt.columns) == ["video", "label", "t_start", "t_end"] and (gt.t_end > gt.t_start).all()


def test_quick_experiment_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "wtal.py"), "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert set(df.method) == {"wtalc", "basnet", "ours"} and df.avg.between(0, 1).all()
    assert df.groupby("method").avg.mean().max() > 0.2  # localization works at all
    assert "AVG" in out.stdout and (tmp_path / "example.png").stat().st_size > 0
