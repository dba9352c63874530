"""The worked examples of notebook 00's measures section, and `metrics.instance_max`.

The notebook prints these numbers live; here they are checked against the counts by hand, so a
change to a measure shows up as a failing example, not only as a different printout.
"""

from __future__ import annotations

import numpy as np
import pytest

from nsrom_lib.metrics import (
    average_precision,
    classification_map,
    confusion_matrix,
    instance_max,
    instance_recall,
    iou_from_confusion,
    label_quality,
    map_quality,
    miou,
)

GT = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 2, 2], [255, 0, 2, 2]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 2, 2, 2]])


def test_iou_of_two_4x4_masks_background_included_255_ignored():
    m, iou = iou_from_confusion(confusion_matrix(PRED, GT, 3))
    assert iou == pytest.approx([4 / 7, 4 / 6, 4 / 5])  # TP / (TP + FP + FN) per label
    assert m == pytest.approx((4 / 7 + 4 / 6 + 4 / 5) / 3)
    assert miou([PRED], [GT], 3) == pytest.approx(m)


def test_ap_of_four_scores_and_map_of_two_classes():
    scores, labels = np.array([0.9, 0.7, 0.4, 0.2]), np.array([1, 0, 1, 0])
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2)
    s2 = np.stack([scores, [0.1, 0.8, 0.3, 0.6]], 1)
    y2 = np.stack([labels, [0, 1, 0, 1]], 1)
    assert classification_map(s2, y2) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_coverage_and_precision_of_one_small_map():
    cam1 = np.array([[.1, .5, .9, .8], [0, .2, .7, .6], [0, 0, .4, .1], [0, 0, 0, 0]])
    cam2 = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, .2, .9, .5], [0, .1, .8, .2]])
    q = map_quality([{0: cam1, 1: cam2}], [GT], threshold=0.3)
    assert q["objects"] == 2
    assert q["coverage"] == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert q["precision"] == pytest.approx(7 / 9)


def test_label_quality_of_a_pseudo_label():
    pseudo = np.array([[0, 255, 1, 1], [0, 255, 1, 1], [0, 0, 2, 2], [0, 2, 255, 2]])
    q = label_quality([pseudo], [GT], 3)
    assert q["coverage"] == pytest.approx(12 / 15)
    assert q["precision"] == pytest.approx(11 / 12)


def test_non_salient_recall_of_one_image():
    inst = np.zeros((6, 6), int)
    inst[0:3, 0:3], inst[3:6, 4:6] = 1, 2
    objects = [{"id": 1, "class": 0, "salient": True}, {"id": 2, "class": 1, "salient": False}]
    seg = np.zeros((6, 6), int)
    seg[0:3, 0:3], seg[3, 4:6] = 1, 2  # salient found whole; 2 of the non-salient's 6 pixels
    assert instance_recall([seg], [inst], [objects], salient=False) == 0.0
    assert instance_recall([seg], [inst], [objects], salient=True) == 1.0
    assert instance_recall([seg], [inst], [objects], salient=False, min_share=0.3) == 1.0


def test_instance_max_per_kind_of_instance():
    inst = np.array([[1, 1, 0], [0, 2, 2], [3, 0, 3]])
    sal = np.array([[200, 90, 0], [0, 0, 40], [0, 7, 0]], np.uint8)
    objs = [{"id": 1, "salient": True}, {"id": 2, "salient": False}, {"id": 3, "salient": False},
            {"id": 4, "salient": False}]  # id 4 has no pixels: skipped
    got = instance_max([sal], [inst], [objs])
    assert got.tolist() == [40, 0] and got.dtype == np.uint8
    assert instance_max([sal], [inst], [objs], salient=True).tolist() == [200]
    assert instance_max([sal], [inst], [objs], salient=None).tolist() == [200, 40, 0]
    assert instance_max(np.stack([sal, sal]), np.stack([inst, inst]), [objs, []]).tolist() == [40, 0]
    with pytest.raises(ValueError, match="differ in size"):
        instance_max([sal[:2]], [inst], [objs])
