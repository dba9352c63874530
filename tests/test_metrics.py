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


# ----------------------------------------------------------------------------- the gap decomposition

# 2 classes. Row 0: background, background, a salient object of class 1 (2 px); row 1:
# background, a non-salient object of class 2 (2 px), one void pixel.
GAP_GT = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
GAP_INST = np.array([[0, 0, 1, 1], [0, 2, 2, 0]])
GAP_OBJS = [[{"id": 1, "class": 0, "salient": True}, {"id": 2, "class": 1, "salient": False}]]
GAP_PRED = np.array([[0, 1, 1, 0], [0, 0, 2, 0]])


def test_nonsalient_object_masks_are_the_non_salient_instances_object_pixels():
    from nsrom_lib.metrics import nonsalient_object_masks

    (m,) = nonsalient_object_masks([GAP_GT], [GAP_INST], GAP_OBJS)
    assert m.tolist() == [[False] * 4, [False, True, True, False]]
    # a void GT pixel inside a non-salient instance is no object pixel
    gt = GAP_GT.copy()
    gt[1, 2] = 255
    assert nonsalient_object_masks([gt], [GAP_INST], GAP_OBJS)[0].sum() == 1
    # every object flagged salient: nothing is non-salient
    salient = [[dict(o, salient=True) for o in GAP_OBJS[0]]]
    assert not nonsalient_object_masks([GAP_GT], [GAP_INST], salient)[0].any()
    with pytest.raises(ValueError, match="size"):
        nonsalient_object_masks([GAP_GT], [GAP_INST[:, :3]], GAP_OBJS)


def test_gap_decomposition_by_hand():
    from nsrom_lib.metrics import GAP_MEASURES, gap_decomposition

    ns = [GAP_INST == 2]
    g = gap_decomposition([GAP_PRED], [GAP_GT], ns, num_classes=2)
    assert tuple(g) == GAP_MEASURES
    # confusion (rows GT 0..2, columns prediction), void pixel left out:
    # [[2, 1, 0], [1, 1, 0], [1, 0, 1]] -> IoU 2/5, 1/3, 1/2
    assert g["miou"] == pytest.approx((2 / 5 + 1 / 3 + 1 / 2) / 3)
    assert g["miou"] == pytest.approx(miou([GAP_PRED], [GAP_GT], 3))
    # non-salient pixels void: [[2, 1, 0], [1, 1, 0], [0, 0, 0]] -> IoU 2/4, 1/3, class 2 absent
    assert g["miou_nonsalient_void"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert g["nonsalient_share"] == pytest.approx(2 / 4)  # 2 of the 4 object pixels
    assert g["nonsalient_as_background"] == pytest.approx(1 / 2)  # (1, 1) predicted 0
    assert g["salient_as_background"] == pytest.approx(1 / 2)  # (0, 3) predicted 0
    assert g["lost_nonsalient"] == pytest.approx(1 / 4) and g["lost_salient"] == pytest.approx(1 / 4)
    assert g["background_as_object"] == pytest.approx(1 / 3)  # (0, 1) of the 3 background pixels
    # predicted object, GT not void: (0, 1) wrong, (0, 2), (1, 2) right; (1, 3) is void
    assert g["object_false_share"] == pytest.approx(1 / 3)


def test_gap_decomposition_counts_a_void_or_ignored_pixel_nowhere():
    from nsrom_lib.metrics import gap_decomposition

    ns = [GAP_INST == 2]
    pred = GAP_PRED.copy()
    pred[1, 1] = 255  # a non-salient pixel predicted ignore: not background, not object
    g = gap_decomposition([pred], [GAP_GT], ns, num_classes=2)
    assert g["nonsalient_as_background"] == 0.0 and g["lost_nonsalient"] == 0.0
    # a class predicted only on a voided non-salient pixel does not enter the voided mIoU
    pred = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])
    g = gap_decomposition([pred], [GAP_GT], ns, num_classes=2)
    assert g["miou_nonsalient_void"] == 1.0 and g["miou"] < 1.0
    assert g["object_false_share"] == pytest.approx(2 / 4)  # (1, 1), (1, 2) have class 2


def test_gap_decomposition_pools_images_and_works_without_instances():
    from nsrom_lib.metrics import gap_decomposition

    ns = [GAP_INST == 2, np.zeros((1, 2), bool)]
    gts, preds = [GAP_GT, np.array([[1, 0]])], [GAP_PRED, np.array([[0, 0]])]
    g = gap_decomposition(preds, gts, ns, num_classes=2)
    # 5 object pixels: the salient one of image 2 is predicted background as well
    assert g["salient_as_background"] == pytest.approx(2 / 3)
    assert g["lost_salient"] == pytest.approx(2 / 5) and g["lost_nonsalient"] == pytest.approx(1 / 5)
    assert g["nonsalient_share"] == pytest.approx(2 / 5)
    # without instance data only the measures that need no saliency are given
    g = gap_decomposition(preds, gts, None, num_classes=2)
    assert g["miou"] == pytest.approx(miou(preds, gts, 3))
    assert g["background_as_object"] == pytest.approx(1 / 4)
    assert all(np.isnan(g[k]) for k in ("miou_nonsalient_void", "nonsalient_share",
                                        "nonsalient_as_background", "lost_salient"))
    with pytest.raises(ValueError, match="size"):
        gap_decomposition([GAP_PRED], [GAP_GT], [np.zeros((1, 4), bool)], num_classes=2)


def test_label_tally_image_by_image_equals_the_list_measures():
    from nsrom_lib.metrics import (
        LabelTally,
        instance_background_share,
        instance_recall,
        label_quality,
    )

    rng = np.random.default_rng(3)
    labels, gts, insts, objs = [], [], [], []
    for k in range(6):
        h, w = 8 + k, 11
        gt = rng.integers(0, 4, (h, w)).astype(np.uint8)
        gt[0] = 255
        lab = np.where(rng.random((h, w)) < 0.3, 255, rng.integers(0, 4, (h, w))).astype(np.uint8)
        lab[:] = 255 if k == 5 else lab  # one all-ignore label
        inst = np.zeros((h, w), np.uint8)
        inst[1:4, 1:5], inst[5:, 6:] = 1, 2
        labels.append(lab), gts.append(gt), insts.append(inst)
        objs.append([{"id": 1, "class": 0, "salient": True},
                     {"id": 2, "class": int(k % 3), "salient": False},
                     {"id": 9, "class": 1, "salient": False}])  # no pixels: not counted
    tally = LabelTally(4)
    for args in zip(labels, gts, insts, objs, strict=True):
        tally.add(*args)
    got, want = tally.label_quality(), label_quality(labels, gts, 4)
    for key in ("precision", "coverage", "miou"):
        assert got[key] == pytest.approx(want[key])
    assert tally.instance_recall(False) == pytest.approx(instance_recall(labels, insts, objs))
    assert tally.instance_recall(True) == pytest.approx(
        instance_recall(labels, insts, objs, salient=True))
    assert tally.instance_background_share() == pytest.approx(
        instance_background_share(labels, insts, objs))
    assert tally.empty_images == 1
    assert tally.ignore_share() == pytest.approx(
        sum(int((x == 255).sum()) for x in labels) / sum(x.size for x in labels))
