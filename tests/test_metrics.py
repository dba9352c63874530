"""Measures of docs/method.md §8 on hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsrom_lib.metrics import (
    confusion_matrix,
    instance_recall,
    iou_from_confusion,
    label_quality,
    miou,
)


def test_confusion_and_iou_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 2]])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]  # void pixel not counted
    m, iou = iou_from_confusion(conf)
    assert iou.tolist() == pytest.approx([2 / 4, 2 / 3, 1 / 2])
    assert m == pytest.approx(np.mean([2 / 4, 2 / 3, 1 / 2]))
    # torch input gives the same
    assert np.array_equal(confusion_matrix(torch.tensor(pred), torch.tensor(gt), 3), conf)


def test_miou_ignores_labels_absent_from_gt_and_prediction():
    gt = np.array([[0, 1]])
    assert miou([gt], [gt], 5) == 1.0  # labels 2..4 absent from both: not averaged


def test_ignored_prediction_pixels_are_not_counted():
    gt = np.array([[1, 1, 0]])
    pred = np.array([[1, 255, 0]])
    assert confusion_matrix(pred, gt, 2).sum() == 2


def test_out_of_range_labels_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([[7]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="size"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_label_quality():
    gt = np.array([[0, 0, 1, 1], [0, 1, 1, 255]])
    lab = np.array([[0, 255, 1, 0], [255, 1, 1, 1]])
    q = label_quality([lab], [gt], 2)
    # labelled & GT valid: (0,0) ok, (0,2) ok, (0,3) wrong, (1,1) ok, (1,2) ok -> 4/5
    assert q["precision"] == pytest.approx(4 / 5)
    assert q["coverage"] == pytest.approx(5 / 7)
    assert 0 < q["miou"] < 1


def test_instance_recall_counts_only_the_asked_kind():
    inst = np.array([[1, 1, 0, 2, 2, 2]])
    objs = [[{"id": 1, "class": 0, "salient": True}, {"id": 2, "class": 1, "salient": False}]]
    lab = np.array([[1, 1, 0, 2, 2, 0]])  # object 2: 2 of 3 pixels right
    assert instance_recall([lab], [inst], objs, salient=False) == 1.0
    lab2 = np.array([[1, 0, 0, 2, 0, 0]])  # object 2: 1 of 3
    assert instance_recall([lab2], [inst], objs, salient=False) == 0.0
    assert instance_recall([lab2], [inst], objs, salient=True) == 1.0  # 1 of 2 = 0.5 >= 0.5
    assert instance_recall([lab2], [inst], objs, salient=None) == 0.5
    assert np.isnan(instance_recall([lab], [inst], [[]], salient=False))


def test_active_share_is_the_mean_active_fraction_of_each_map():
    from nsrom_lib.metrics import active_share

    a = np.zeros((4, 4), np.uint8)
    a[0, :2] = 255  # 2 of 16 pixels
    b = np.full((2, 2), 0.5)  # float map: all 4 pixels above 0.3, none above 0.6
    b[1, 1] = 0.0
    maps = [{0: a}, {2: b, 1: np.zeros((2, 2))}]
    assert active_share(maps) == pytest.approx((2 / 16 + 3 / 4 + 0) / 3)
    assert active_share(maps, threshold=0.6) == pytest.approx((2 / 16) / 3)
    assert active_share([{}]) != active_share([{}])  # NaN without maps
