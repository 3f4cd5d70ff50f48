"""detection_map follows the ActivityNet protocol on hand-made cases."""
import numpy as np
import pandas as pd
import pytest

from driftlab.platform.metrics import THUMOS_TIOUS, detection_map, segment_iou


def gt(*rows):
    return pd.DataFrame(rows, columns=["video", "label", "t_start", "t_end"])


def pred(*rows):
    return pd.DataFrame(rows, columns=["video", "label", "t_start", "t_end", "score"])


def test_perfect_predictions_give_one():
    g = gt(("v1", 0, 1.0, 5.0), ("v1", 1, 6.0, 9.0), ("v2", 0, 0.0, 2.0))
    p = pred(*[(*r, 0.9) for r in g.itertuples(index=False)])
    np.testing.assert_allclose(detection_map(g, p), np.ones(len(THUMOS_TIOUS)))


def test_a_duplicate_is_a_false_positive():
    g = gt(("v1", 0, 0.0, 10.0), ("v1", 0, 20.0, 30.0))
    p = pred(("v1", 0, 0.0, 10.0, 0.9), ("v1", 0, 0.0, 10.0, 0.8), ("v1", 0, 20.0, 30.0, 0.7))
    # TP, FP, TP: precision 1, .5, .667 at recall .5, .5, 1 -> AP = .5 * 1 + .5 * 2/3
    assert detection_map(g, p, [0.5])[0] == pytest.approx(5 / 6)


def test_a_prediction_in_a_video_without_that_class_is_a_false_positive():
    g = gt(("v1", 0, 0.0, 10.0), ("v2", 1, 0.0, 10.0))
    p = pred(("v2", 0, 0.0, 10.0, 0.9), ("v1", 0, 0.0, 10.0, 0.8), ("v2", 1, 0.0, 10.0, 0.5))
    # class 0: FP then TP -> AP .5; class 1: AP 1; mean .75
    assert detection_map(g, p, [0.5])[0] == pytest.approx(0.75)


def test_thresholds_and_greedy_matching_by_highest_tiou():
    g = gt(("v", 0, 0.0, 10.0))
    p = pred(("v", 0, 0.0, 6.0, 0.9))   # tIoU 0.6
    np.testing.assert_allclose(detection_map(g, p, [0.5, 0.6, 0.7]), [1.0, 1.0, 0.0])
    # Two ground truths: the prediction takes the one it overlaps most.
    g2 = gt(("v", 0, 0.0, 10.0), ("v", 0, 8.0, 20.0))
    p2 = pred(("v", 0, 9.0, 20.0, 0.9), ("v", 0, 0.0, 10.0, 0.8))
    assert detection_map(g2, p2, [0.5])[0] == pytest.approx(1.0)
    # Classes without ground truth do not count; missing classes score 0.
    g3 = gt(("v", 0, 0.0, 10.0), ("v", 1, 0.0, 10.0))
    p3 = pred(("v", 0, 0.0, 10.0, 0.9), ("v", 2, 0.0, 10.0, 0.9))
    assert detection_map(g3, p3, [0.5])[0] == pytest.approx(0.5)


def test_segment_iou():
    segs = np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 30.0]])
    np.testing.assert_allclose(segment_iou(0.0, 10.0, segs), [1.0, 5 / 15, 0.0])
