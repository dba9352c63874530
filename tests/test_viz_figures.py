"""Figures that compare two predictions (`viz.difference_map` and its helpers)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from nsrom_lib import viz

# A 2 x 3 case where every pixel's fate is known:
#   (0, 0) both right; (0, 1) gained (A wrong, B right); (0, 2) lost (A right, B wrong);
#   (1, 0) both wrong; (1, 1) void in the ground truth; (1, 2) gained (background).
GT = np.array([[1, 2, 2], [1, 255, 0]], np.uint8)
A = np.array([[1, 0, 2], [0, 1, 3]], np.uint8)
B = np.array([[1, 2, 0], [2, 0, 0]], np.uint8)


def test_difference_masks_know_every_pixel():
    m = viz.difference_masks(A, B, GT)
    assert m["gained"].tolist() == [[False, True, False], [False, False, True]]
    assert m["lost"].tolist() == [[False, False, True], [False, False, False]]
    assert m["void"].tolist() == [[False, False, False], [False, True, False]]
    # swapping A and B swaps gained and lost
    s = viz.difference_masks(B, A, GT)
    assert (s["gained"] == m["lost"]).all() and (s["lost"] == m["gained"]).all()


def test_difference_map_colours():
    out = viz.difference_map(A, B, GT)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    c = viz.DIFFERENCE_COLOURS
    assert tuple(out[0, 1]) == c["gained"] and tuple(out[1, 2]) == c["gained"]
    assert tuple(out[0, 2]) == c["lost"]
    assert tuple(out[1, 1]) == c["void"]
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[1, 0]) == (0, 0, 0)  # no change: black


def test_difference_map_over_an_image():
    image = np.full((2, 3, 3), 200, np.uint8)
    out = viz.difference_map(A, B, GT, image=image, dim=0.5)
    assert tuple(out[0, 0]) == (100, 100, 100)  # unchanged pixel: the image, darkened
    assert tuple(out[0, 1]) == viz.DIFFERENCE_COLOURS["gained"]
    assert tuple(out[0, 2]) == viz.DIFFERENCE_COLOURS["lost"]


def test_difference_counts_over_a_batch():
    counts = viz.difference_counts(np.stack([A, A]), np.stack([B, B]), np.stack([GT, GT]))
    assert counts == {"gained": 4, "lost": 2, "void": 2, "scored": 10}
    assert viz.difference_counts(A, A, GT)["gained"] == viz.difference_counts(A, A, GT)["lost"] == 0


def test_difference_map_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        viz.difference_map(A, B[:, :2], GT)
    with pytest.raises(ValueError, match="one image"):
        viz.difference_map(np.stack([A]), np.stack([B]), np.stack([GT]))
    with pytest.raises(ValueError, match="image must be"):
        viz.difference_map(A, B, GT, image=np.zeros((3, 2, 3), np.uint8))


def test_difference_legend_names_the_models():
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 2))
    legend = viz.difference_legend(fig, "round 1", "round 2")
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0] == "round 2 right, round 1 wrong" and texts[1] == "round 1 right, round 2 wrong"
    assert not any("`" in t for t in texts)
    plt.close(fig)


def _gap_metrics(with_saliency=True):
    """A metrics.json dict with only what gap_chart and gap_table read."""
    rows = ("upper_bound", "be_round1", "pom_round1", "nsrm_round2", "nsrm_round2_no_glore",
            "pom_round1_no_glore")
    m = {k: dict(title=f"model {k}", stage=f"stage/{k}") for k in rows}
    m["gap"] = {}
    for i, k in enumerate(rows):
        g = 0.0 if k == "upper_bound" else 0.1 + 0.02 * i
        m["gap"].update({f"{k}.miou": 0.8 - g, f"{k}.gap": g,
                         f"{k}.gap_from_nonsalient": 0.75 * g if with_saliency else None,
                         f"{k}.gap_nonsalient_void": 0.25 * g if with_saliency else None})
    return m


def test_gap_chart_stacks_the_non_salient_part_under_the_rest():
    import matplotlib.pyplot as plt

    fig = viz.gap_chart(_gap_metrics())
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 10  # 5 models x 2 parts
    ns, rest = bars[:5], bars[5:]
    g = _gap_metrics()["gap"]
    for b_ns, b_rest, k in zip(ns, rest, ("be_round1", "pom_round1", "nsrm_round2",
                                          "pom_round1_no_glore", "nsrm_round2_no_glore"),
                               strict=True):
        assert b_ns.get_height() == pytest.approx(g[f"{k}.gap_from_nonsalient"])
        assert b_rest.get_y() == pytest.approx(b_ns.get_height())  # stacked on top
        assert b_ns.get_height() + b_rest.get_height() == pytest.approx(g[f"{k}.gap"])
    assert any("75% non-salient" in t.get_text() for t in ax.texts)
    plt.close(fig)
    # without instance data: the whole gap in one bar, no share claimed
    fig = viz.gap_chart(_gap_metrics(with_saliency=False), rows=["nsrm_round2"])
    ax = fig.axes[0]
    assert [b.get_height() for b in ax.patches] == pytest.approx([0.0, 0.16])
    assert not any("non-salient)" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_ablation_chart_draws_the_oaa_row_when_the_metrics_have_it():
    import matplotlib.pyplot as plt

    rows = ("upper_bound", "be_round1", "pom_round1_cam", "pom_round1", "nsrm_round2",
            "nsrm_round2_no_glore")
    metrics = {k: dict(title=f"model {k}", miou=0.5 + 0.05 * i, nonsalient_recall=0.3)
               for i, k in enumerate(rows)}
    ticks = [t.get_text() for t in viz.ablation_chart(metrics).axes[0].get_xticklabels()]
    assert [t.replace("\n", " ") for t in ticks] == [f"model {k}" for k in rows]
    # a run from before the CAM variant existed: the chart leaves that bar out
    old = {k: v for k, v in metrics.items() if k != "pom_round1_cam"}
    assert len(viz.ablation_chart(old).axes[0].get_xticklabels()) == len(rows) - 1
    plt.close("all")
