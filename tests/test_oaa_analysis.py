"""The coverage-precision curves, reference maps and OAA epoch summaries of notebooks 02 and 02b."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from nsrom_lib.cam import REFERENCE_MAPS, object_cell_maps, reference_maps, snapshot_epochs  # noqa: E402
from nsrom_lib.metrics import (  # noqa: E402
    compare_with_curve,
    coverage_precision_curve,
    curve_point,
    map_quality,
    oaa_epoch_summary,
    per_class_quality,
)
from nsrom_lib.viz import plot_coverage_precision, plot_oaa_epochs


def _toy():
    """One 1 x 6 image: class 0 on pixels 0-2, class 1 on pixels 4-5; a graded map of class 0."""
    mask = np.array([[1, 1, 1, 0, 2, 2]], np.uint8)
    m0 = np.array([[1.0, 0.6, 0.2, 0.4, 0.05, 0.0]])  # float maps in [0, 1]
    m1 = np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 0.5]])
    return [{0: m0, 1: m1}], {"masks": [mask], "instances": None, "objects": None}


def test_curve_is_map_quality_at_every_threshold():
    maps, gt = _toy()
    curve = coverage_precision_curve(maps, gt, (0.5, 0.1, 0.0))
    assert curve["threshold"] == [0.5, 0.1, 0.0]
    for t, cov, prec in zip(curve["threshold"], curve["coverage"], curve["precision"], strict=True):
        q = map_quality(maps, gt["masks"], threshold=t)
        assert (cov, prec) == (q["coverage"], q["precision"])
    # > 0.5: class 0 on pixels 0, 1 (2 of 3), class 1 on pixel 4 (1 of 2); all active pixels right
    assert curve["coverage"][0] == pytest.approx((2 / 3 + 1 / 2) / 2) and curve["precision"][0] == 1.0
    # > 0: class 0 active on 0..4 (pixel 3 background, 4 class 1: wrong), class 1 on 4, 5
    assert curve["precision"][-1] == pytest.approx(5 / 7)
    assert curve["share"][-1] == pytest.approx((5 / 6 + 2 / 6) / 2)
    assert curve["coverage"] == sorted(curve["coverage"])  # strict to lax: coverage rises


def test_curve_point_and_a_missing_threshold():
    maps, gt = _toy()
    curve = coverage_precision_curve(maps, gt, (0.5, 0.0))
    p = curve_point(curve, 0.0)
    assert p["threshold"] == 0.0 and p["precision"] == curve["precision"][1]
    with pytest.raises(ValueError, match="not on the curve"):
        curve_point(curve, 0.3)


def test_compare_with_curve_verdicts():
    curve = {"threshold": [0.7, 0.3, 0.0], "coverage": [0.2, 0.5, 0.8], "precision": [0.9, 0.7, 0.3]}
    # at coverage 0.65 the curve's precision is 0.5, interpolated between its points
    assert compare_with_curve({"coverage": 0.65, "precision": 0.6}, curve) == {
        "precision_on_curve": pytest.approx(0.5), "verdict": "above"}
    assert compare_with_curve({"coverage": 0.65, "precision": 0.51}, curve)["verdict"] == "on"
    assert compare_with_curve({"coverage": 0.65, "precision": 0.4}, curve)["verdict"] == "below"
    assert compare_with_curve({"coverage": 0.9, "precision": 0.4}, curve) == {
        "precision_on_curve": None, "verdict": "beyond"}
    # a NaN point (no active pixel at a strict threshold) is left out, not propagated
    nan = {"threshold": [0.7, 0.3, 0.0], "coverage": [0.0, 0.5, 0.8], "precision": [math.nan, 0.7, 0.3]}
    assert compare_with_curve({"coverage": 0.65, "precision": 0.5}, nan)["verdict"] == "on"


def test_per_class_quality_counts_other_classes_as_background():
    maps, gt = _toy()
    per = per_class_quality({"a": maps}, gt, num_classes=3, threshold=0.0)
    assert sorted(per) == [0, 1]  # class 2 has no pixel in the GT
    # class 0's map above 0 on pixels 0..4: 3 right of 5; it covers its whole object
    assert per[0]["a"]["precision"] == pytest.approx(3 / 5) and per[0]["a"]["coverage"] == 1.0
    assert per[1]["a"]["precision"] == 1.0 and per[1]["a"]["coverage"] == 1.0


def _rows(own_prec, acc_cov):
    return [{"epoch": e, "images": 4, "own": {"coverage": 0.1, "precision": p},
             "accumulated": {"coverage": c, "precision": 0.5}}
            for e, p, c in zip(range(2, 2 + len(own_prec)), own_prec, acc_cov, strict=True)]


def test_oaa_epoch_summary_finds_the_settled_epoch():
    s = oaa_epoch_summary(_rows([0.2, 0.5, 0.75, 0.8], [0.3, 0.4, 0.5, 0.6]))
    assert s["settled"]["epoch"] == 4  # 0.75 >= 0.9 * 0.8
    assert (s["before"], s["coverage_before"], s["settled_epochs"]) == (2, 0.4, 2)
    assert s["last"]["epoch"] == 5
    s = oaa_epoch_summary(_rows([0.8, 0.8], [0.3, 0.4]))
    assert (s["before"], s["coverage_before"], s["settled_epochs"]) == (0, 0.0, 2)
    with pytest.raises(ValueError, match="no fused epochs"):
        oaa_epoch_summary([])


def test_the_figures_draw():
    import matplotlib.pyplot as plt

    maps, gt = _toy()
    curve = coverage_precision_curve(maps, gt)
    fig = plot_coverage_precision({"CAM": curve}, marks={"ref": {"coverage": 1.0, "precision": 0.5}})
    assert len(fig.axes[0].lines) == 3  # the curve, its open mark at 0.3, the reference mark
    fig2 = plot_oaa_epochs(_rows([0.2, 0.5], [0.3, 0.4]), final_cam={"coverage": 0.2, "precision": 0.7})
    assert len(fig2.axes) == 2
    plt.close("all")


def test_reference_maps_are_object_cell_maps():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    mask[6:8, 0:3] = 2
    refs = reference_maps([mask], [[0, 1]], (4, 4))
    assert set(refs) == set(REFERENCE_MAPS)
    for key, (_, kw) in REFERENCE_MAPS.items():
        want = object_cell_maps(mask, [0, 1], (4, 4), **kw)
        assert all(np.array_equal(refs[key][0][c], want[c]) for c in (0, 1))
    with pytest.raises(ValueError):
        reference_maps([mask], [[0], [1]], (4, 4))  # one class list per mask


def test_snapshot_epochs_spread_evenly_without_repeats():
    assert snapshot_epochs(2, 30) == [2, 11, 21, 30]
    assert snapshot_epochs(2, 12) == [2, 5, 9, 12]
    assert snapshot_epochs(2, 3) == [2, 3]
    assert snapshot_epochs(2, 2) == [2]
    assert snapshot_epochs(1, 10, k=2) == [1, 10]
    with pytest.raises(ValueError):
        snapshot_epochs(5, 2)
