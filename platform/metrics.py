"""Results of a simulation: per-frame and per-job tables, the summary, the plot.

:class:`ResultSink` collects rows as the run goes and rewrites its Parquet files
atomically after every window, so a crash loses at most the current window;
each finished strategy is recorded in ``progress.json``, which a resumed run
(``drift_sim.py --resume``) reads to skip it. Every file here is written
whole or not at all (:func:`write_atomic`).
"""
from __future__ import annotations

import json
import os
import threading
from typing import Callable

import numpy as np
import pandas as pd

from .validation import ConfigError

__all__ = ["ResultSink", "PROGRESS", "write_atomic", "summarize", "returned", "reaction_time", "JOB_COLUMNS",
           "format_table", "plot_accuracy", "SUMMARY_COLUMNS", "over_seeds", "format_seed_table",
           "detection_map", "segment_iou", "THUMOS_TIOUS", "write_parquet"]

PROGRESS = "progress.json"
"""The strategies of a run that finished, with what their summary needs
beyond the frame and job rows: ``{"done": {strategy: {"frames_uploaded": n,
"label_gpu_s": s}}}``."""

SUMMARY_COLUMNS = ["strategy", "accuracy", "drift_accuracy", "return_accuracy", "update_delay_s", "reaction_s",
                   "frames_uploaded", "label_gpu_s", "train_gpu_s", "jobs", "zoo_hits"]
"""``accuracy`` on every frame with a label, ``drift_accuracy`` on the frames
whose condition is not the camera's initial one, ``return_accuracy`` on the
frames back in the initial condition after the camera left it (what a model
that forgot it loses); ``jobs`` counts retraining jobs, ``zoo_hits`` the
models the zoo deployed (``+zoo``); ``label_gpu_s`` holds the teacher's
labelling and the zoo's checks."""

JOB_COLUMNS = ["strategy", "camera", "kind", "submitted", "started", "finished", "deployed", "samples", "epochs",
               "gpu_s"]
"""One row per deployment: ``kind`` is ``"retrain"`` (a job; ``started`` and
``finished`` on the training GPUs) or ``"zoo"`` (a stored model; ``samples``
the frames it was checked on)."""


class ResultSink:
    """Accumulates frame and job rows of ``strategies`` (from any thread);
    ``flush()`` writes them to ``out_dir``, strategy by strategy in the given
    order whatever order they arrived in. With ``classes`` (the task's
    class names) the frames file also has ``label_name`` and ``pred_name``,
    and every file carries the names in its Parquet metadata
    (``driftlab.classes``, a JSON list). With ``resume``, the rows and
    figures of the strategies ``out_dir``'s :data:`PROGRESS` records as
    finished are read back (:attr:`done`); the rest start empty."""

    def __init__(self, out_dir: str | None, strategies: list[str], classes: tuple[str, ...] | None = None,
                 resume: bool = False):
        self.out_dir, self.classes = out_dir, classes
        self._frames: dict[str, list[pd.DataFrame]] = {s: [] for s in strategies}
        self._jobs: dict[str, list[dict]] = {s: [] for s in strategies}
        self._lock = threading.RLock()
        self.uploads: dict[str, int] = {}
        self.label_gpu_s: dict[str, float] = {}
        self.done: dict[str, dict] = {}
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            if resume and os.path.exists(os.path.join(out_dir, PROGRESS)):
                self._read_back()

    def _read_back(self) -> None:
        path = os.path.join(self.out_dir, PROGRESS)
        try:
            with open(path) as f:
                done = {s: v for s, v in json.load(f)["done"].items() if s in self._frames}
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"cannot resume: {path} is unreadable ({e!r}); give a new --out") from None
        if not done:
            return
        frames = pd.read_parquet(os.path.join(self.out_dir, "frames.parquet"))
        jobs = pd.read_parquet(os.path.join(self.out_dir, "jobs.parquet"))
        if "kind" not in jobs:   # written before the zoo: every row a job
            jobs.insert(2, "kind", "retrain")
        frames = frames.drop(columns=["label_name", "pred_name"], errors="ignore")
        for s, figures in done.items():
            self._frames[s] = [frames[frames.strategy == s].reset_index(drop=True)]
            self._jobs[s] = jobs[jobs.strategy == s].to_dict("records")
            self.uploads[s], self.label_gpu_s[s] = figures["frames_uploaded"], figures["label_gpu_s"]
        self.done = done

    def finish(self, strategy: str, uploads: int, label_gpu_s: float) -> None:
        """``strategy`` ran to its end: its rows are flushed, then it is
        recorded as done (never the other way round)."""
        with self._lock:
            self.uploads[strategy], self.label_gpu_s[strategy] = uploads, label_gpu_s
            self.flush()
            self.done[strategy] = {"frames_uploaded": int(uploads), "label_gpu_s": float(label_gpu_s)}
            if self.out_dir:
                write_atomic(os.path.join(self.out_dir, PROGRESS), json.dumps({"done": self.done}, indent=1))

    def add(self, strategy: str, logs: list, jobs: list) -> None:
        """One tick of ``strategy``: its cameras' :class:`FrameLog` and the jobs it started."""
        frames = [pd.DataFrame({
            "strategy": strategy, "camera": log.camera, "t": log.times, "label": log.labels,
            "pred": log.preds, "correct": log.preds == log.labels, "conf": log.confs,
            "model_version": log.versions, "drifted": log.drifted}) for log in logs]
        rows = [{"strategy": strategy, **{c: getattr(job, c) for c in JOB_COLUMNS[1:]}} for job in jobs]
        with self._lock:
            self._frames[strategy].extend(frames)
            self._jobs[strategy].extend(rows)

    def frames(self) -> pd.DataFrame:
        with self._lock:
            parts = [f for s in self._frames.values() for f in s]
        if not parts:
            return pd.DataFrame(columns=["strategy", "camera", "t", "label", "pred", "correct",
                                         "conf", "model_version", "drifted"])
        return pd.concat(parts, ignore_index=True)

    def jobs(self) -> pd.DataFrame:
        with self._lock:
            rows = [r for s in self._jobs.values() for r in s]
        return pd.DataFrame(rows, columns=JOB_COLUMNS)

    def flush(self) -> None:
        if not self.out_dir:
            return
        with self._lock:  # one strategy's rows in one frame each: later flushes concat fewer parts
            for s, parts in self._frames.items():
                if len(parts) > 1:
                    self._frames[s] = [pd.concat(parts, ignore_index=True)]
            frames = self.frames()
            if self.classes:
                for col in ("label", "pred"):
                    frames[f"{col}_name"] = pd.Categorical.from_codes(frames[col].astype(int), self.classes)
            write_parquet(frames, os.path.join(self.out_dir, "frames.parquet"), self.classes)
            write_parquet(self.jobs(), os.path.join(self.out_dir, "jobs.parquet"), self.classes)

    def summary(self, strategies: list[str]) -> pd.DataFrame:
        return summarize(self.frames(), self.jobs(), strategies, self.uploads, self.label_gpu_s)


def write_atomic(path: str, content: str | Callable[[str], None]) -> None:
    """Write ``content`` (text, or a function writing a file at the path it
    is given) whole next to ``path``, then rename it over ``path``: a kill
    at any moment leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    if callable(content):
        content(tmp)
    else:
        with open(tmp, "w") as f:
            f.write(content)
    os.replace(tmp, path)


def write_parquet(df: pd.DataFrame, path: str, classes: tuple[str, ...] | None = None) -> None:
    """Write ``df`` to ``path`` atomically (a crash leaves the old file
    whole), with the task's ``classes`` in its metadata (``driftlab.classes``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if classes:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"driftlab.classes": json.dumps(list(classes)).encode()})
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def summarize(frames: pd.DataFrame, jobs: pd.DataFrame, strategies: list[str],
              uploads: dict[str, int], label_gpu_s: dict[str, float]) -> pd.DataFrame:
    """One row per strategy: the columns of the results table."""
    rows = []
    for s in strategies:
        f, j = frames[frames.strategy == s], jobs[jobs.strategy == s]
        retrain = j[j.kind == "retrain"]
        known = f[f.label >= 0]
        drift = known[known.drifted]
        back = known[returned(known)]
        delay = (retrain.deployed - retrain.submitted).mean() if len(retrain) else float("nan")
        rows.append({
            "strategy": s,
            "accuracy": float(known.correct.mean()) if len(known) else float("nan"),
            "drift_accuracy": float(drift.correct.mean()) if len(drift) else float("nan"),
            "return_accuracy": float(back.correct.mean()) if len(back) else float("nan"),
            "update_delay_s": float(delay),
            "reaction_s": reaction_time(f, j),
            "frames_uploaded": int(uploads.get(s, 0)),
            "label_gpu_s": float(round(label_gpu_s.get(s, 0.0), 6)),
            "train_gpu_s": float(round(j.gpu_s.sum(), 6)) if len(j) else 0.0,
            "jobs": int(len(retrain)),
            "zoo_hits": int((j.kind == "zoo").sum()),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def returned(frames: pd.DataFrame) -> np.ndarray:
    """Which of ``frames`` (one strategy's) are back in their camera's initial
    condition after the camera left it: not drifted, with a drifted frame of
    the same camera before them."""
    order = frames.sort_values(["camera", "t"])
    left = order.groupby("camera").drifted.cummax().to_numpy()
    back = pd.Series(left & ~order.drifted.to_numpy(), index=order.index)
    return back.reindex(frames.index).to_numpy()


def reaction_time(frames: pd.DataFrame, jobs: pd.DataFrame) -> float:
    """Mean stream seconds from a camera's drift onset (its condition leaving
    the initial one) to the camera's first new model after it; the stream's end
    stands in where none came. A model from the zoo counts. NaN for a
    strategy that never updates."""
    if jobs.empty:
        return float("nan")
    end = float(frames.t.max())
    waits = []
    for cam, f in frames.groupby("camera"):
        f = f.sort_values("t")
        flags = f.drifted.to_numpy()
        onsets = f.t.to_numpy()[flags & ~np.r_[False, flags[:-1]]]
        deployed = np.sort(jobs.deployed[jobs.camera == cam].to_numpy())
        for t in onsets:
            later = deployed[deployed > t]
            waits.append((later[0] if len(later) else end) - t)
    return float(np.mean(waits)) if waits else float("nan")


def format_table(summary: pd.DataFrame) -> str:
    """The summary as a readable fixed-width table (accuracies in %)."""
    lines = [f"{'strategy':<12} {'acc %':>7} {'drift acc %':>11} {'return acc %':>12} {'delay s':>8} "
             f"{'react s':>8} {'uploaded':>9} {'label GPU-s':>11} {'train GPU-s':>11} {'jobs':>5} {'zoo':>4}"]

    def opt(x: float, scale: float = 1.0) -> str:
        return "-" if np.isnan(x) else f"{scale * x:.1f}"

    for r in summary.itertuples():
        lines.append(f"{r.strategy:<12} {100 * r.accuracy:>7.1f} {opt(r.drift_accuracy, 100):>11} "
                     f"{opt(r.return_accuracy, 100):>12} {opt(r.update_delay_s):>8} {opt(r.reaction_s):>8} "
                     f"{r.frames_uploaded:>9d} {r.label_gpu_s:>11.1f} {r.train_gpu_s:>11.1f} {r.jobs:>5d} "
                     f"{r.zoo_hits:>4d}")
    return "\n".join(lines)


def over_seeds(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Each strategy's summary over several seeds (``by_seed``: summaries with a
    ``seed`` column): the mean and sample standard deviation of its accuracy,
    drift accuracy and update delay, mean costs, and its ``margin``, the paired
    gap to the best other strategy of the same seed (positive: ahead of all of
    them), which is what "A beats the rest" has to clear, seed noise included."""
    rows = []
    for s in dict.fromkeys(by_seed.strategy):
        mine = by_seed[by_seed.strategy == s].set_index("seed")
        others = by_seed[by_seed.strategy != s].groupby("seed").accuracy.max()
        margin = (mine.accuracy - others).dropna()
        row = {"strategy": s, "seeds": len(mine)}
        for col in ("accuracy", "drift_accuracy", "return_accuracy", "update_delay_s"):
            row[col], row[f"{col}_std"] = mine[col].mean(), mine[col].std()
        for col in ("frames_uploaded", "train_gpu_s", "zoo_hits"):
            row[col] = mine[col].mean()
        row["margin"], row["margin_std"] = margin.mean(), margin.std()
        rows.append(row)
    return pd.DataFrame(rows)


def format_seed_table(table: pd.DataFrame) -> str:
    """:func:`over_seeds` as a readable table: mean ± std (in points for accuracies)."""
    def pm(mean: float, std: float, scale: float = 1.0, sign: str = "") -> str:
        if np.isnan(mean):
            return "-"
        return f"{scale * mean:{sign}.1f}" + ("" if np.isnan(std) else f" ± {scale * std:.1f}")

    lines = [f"{'strategy':<12} {'acc %':>12} {'drift acc %':>12} {'return acc %':>12} {'delay s':>12} "
             f"{'uploaded':>9} {'train GPU-s':>11} {'zoo':>5} {'vs best other':>14}"]
    for r in table.itertuples():
        lines.append(f"{r.strategy:<12} {pm(r.accuracy, r.accuracy_std, 100):>12} "
                     f"{pm(r.drift_accuracy, r.drift_accuracy_std, 100):>12} "
                     f"{pm(r.return_accuracy, r.return_accuracy_std, 100):>12} "
                     f"{pm(r.update_delay_s, r.update_delay_s_std):>12} {r.frames_uploaded:>9.0f} "
                     f"{r.train_gpu_s:>11.1f} {r.zoo_hits:>5.1f} {pm(r.margin, r.margin_std, 100, '+'):>14}")
    return "\n".join(lines)


def plot_accuracy(frames: pd.DataFrame, path: str, bin_s: float = 20.0, title: str = "",
                  classes: tuple[str, ...] | None = None) -> None:
    """Accuracy over stream time (all cameras), one line per strategy; periods
    when most cameras are drifted are shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    known = frames[frames.label >= 0].copy()
    known["bin"] = (known.t // bin_s) * bin_s + bin_s / 2
    first = known[known.strategy == known.strategy.iloc[0]] if len(known) else known
    drift = first.groupby("bin").drifted.mean()
    for b, share in drift.items():
        if share > 0:
            ax.axvspan(b - bin_s / 2, b + bin_s / 2, color="tab:gray", alpha=0.25 * share, lw=0)
    for s, g in known.groupby("strategy", sort=False):
        acc = g.groupby("bin").correct.mean() * 100
        ax.plot(acc.index, acc.values, label=s, lw=1.8 if s == "edgesync" else 1.2)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "accuracy over time (shaded: share of cameras under drift)")
    if classes:
        fig.text(0.99, 0.01, "classes: " + ", ".join(classes), ha="right", va="bottom", fontsize=7,
                 color="tab:gray")
    ax.legend(loc="lower left", ncol=5, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


# --- temporal action detection (seed 3), ActivityNet protocol ------------------

THUMOS_TIOUS = np.round(np.arange(0.1, 0.75, 0.1), 2)  # 0.1:0.1:0.7, as THUMOS-14 papers report


def detection_map(ground_truth: pd.DataFrame, predictions: pd.DataFrame,
                  tiou_thresholds=THUMOS_TIOUS) -> np.ndarray:
    """Mean average precision of temporal detections at each tIoU threshold.

    ``ground_truth`` has columns ``video, label, t_start, t_end``;
    ``predictions`` the same plus ``score``. Follows the ActivityNet detection
    evaluation exactly: per class, predictions sorted by descending score; each
    prediction matched to the unmatched ground truth of its video and class
    with the highest tIoU at or above the threshold (each ground truth at most
    once per threshold, so a duplicate is a false positive, and so is a
    prediction in a video without that class); AP all-point interpolated.
    The mean is over classes that have ground truth.
    """
    thresholds = np.asarray(tiou_thresholds, float)
    classes = sorted(ground_truth.label.unique())
    if not classes:
        raise ValueError("detection_map needs at least one ground-truth segment")
    ap = np.zeros((len(classes), len(thresholds)))
    for ci, c in enumerate(classes):
        gt = ground_truth[ground_truth.label == c]
        pred = predictions[predictions.label == c]
        ap[ci] = _class_ap(gt, pred, thresholds)
    return ap.mean(axis=0)


def _class_ap(gt: pd.DataFrame, pred: pd.DataFrame, thresholds: np.ndarray) -> np.ndarray:
    if pred.empty:
        return np.zeros(len(thresholds))
    pred = pred.sort_values("score", ascending=False, kind="mergesort")
    gt_by_video = {v: g[["t_start", "t_end"]].to_numpy(float) for v, g in gt.groupby("video")}
    matched = {v: np.zeros((len(thresholds), len(g)), bool) for v, g in gt_by_video.items()}
    tp = np.zeros((len(thresholds), len(pred)))
    for i, (video, s, e) in enumerate(pred[["video", "t_start", "t_end"]].itertuples(index=False)):
        segs = gt_by_video.get(video)
        if segs is None:
            continue  # no ground truth of this class in the video: a false positive
        tiou = segment_iou(float(s), float(e), segs)
        order = np.argsort(-tiou, kind="mergesort")
        for k, thr in enumerate(thresholds):
            for j in order:
                if tiou[j] < thr:
                    break
                if not matched[video][k, j]:
                    matched[video][k, j] = True
                    tp[k, i] = 1
                    break
    npos = len(gt)
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1 - tp, axis=1)
    recall = tp_cum / npos
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([_interpolated_ap(precision[k], recall[k]) for k in range(len(thresholds))])


def segment_iou(t_start: float, t_end: float, segments: np.ndarray) -> np.ndarray:
    """Temporal IoU of one segment with each row ``(start, end)`` of ``segments``."""
    inter = np.clip(np.minimum(t_end, segments[:, 1]) - np.maximum(t_start, segments[:, 0]), 0, None)
    union = (t_end - t_start) + (segments[:, 1] - segments[:, 0]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP (the ActivityNet / VOC2010+ definition)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))
