"""The shared figures: label legends, the pipeline figure, and what papermill must not freeze."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nsrom_lib import viz  # noqa: E402


def test_palette_background_ignore_and_distinct_classes():
    assert tuple(viz.PALETTE[0]) == (0, 0, 0) and tuple(viz.PALETTE[viz.IGNORE]) == (255, 255, 255)
    classes = {tuple(c) for c in viz.PALETTE[1:21]}
    assert len(classes) == 20, "VOC's 20 classes get 20 different colours"
    assert not classes & {(0, 0, 0), (255, 255, 255)}


def test_overlay_grid_with_classes_has_a_legend():
    img = np.full((16, 16, 3), 120, np.uint8)
    lab = np.zeros((16, 16), np.uint8)
    lab[2:8, 2:8], lab[10:14, 10:14], lab[0] = 1, 3, viz.IGNORE
    fig = viz.image_grid([[img, viz.overlay(img, lab)]], [["image", "label"]], classes=["disc", "square", "star"])
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["0 background", "1 disc", "2 square", "3 star", "255 ignore"]
    colours = [tuple(np.round(np.array(h.get_facecolor()[:3]) * 255).astype(int)) for h in legend.legend_handles]
    assert colours[1:4] == [tuple(int(v) for v in viz.PALETTE[i]) for i in (1, 2, 3)]
    assert colours[-1] == (255, 255, 255)
    assert not viz.image_grid([[img]]).legends, "no legend where no labels are drawn"


def test_overlay_uses_the_display_palette():
    img = np.zeros((4, 4, 3), np.uint8)
    lab = np.array([[0, 1, 2, viz.IGNORE]] * 4, np.uint8)
    out = viz.overlay(img, lab, alpha=1.0)
    assert (out[:, 0] == 0).all()
    assert (out[:, 1] == viz.PALETTE[1]).all() and (out[:, 3] == 255).all()


def test_pipeline_figure_highlights_one_box():
    def faces(fig):
        return [tuple(p.get_facecolor()) for p in fig.axes[0].patches if hasattr(p, "get_boxstyle")]

    plain = faces(viz.pipeline_figure())
    assert len(plain) == len(viz.PIPELINE_STEPS) and len(set(plain)) == 1
    here = faces(viz.pipeline_figure(here="04"))
    changed = [i for i, (a, b) in enumerate(zip(plain, here, strict=True)) if a != b]
    assert changed == [4]
    assert faces(viz.pipeline_figure(here="02b")) == faces(viz.pipeline_figure(here="02"))
    texts = [t.get_text() for t in viz.pipeline_figure(here="04").axes[0].texts]
    assert "you are here" in texts and all(nb in texts for nb, _, _ in viz.PIPELINE_STEPS)
    with pytest.raises(ValueError, match="not a notebook number"):
        viz.pipeline_figure(here="12")


def test_progress_bars_are_off_when_headless(monkeypatch):
    from nsrom_lib.progress import HEADLESS_ENV, headless, headless_env, progress_bar

    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    assert not headless()
    with headless_env():
        assert headless()
        assert progress_bar(range(3)).disable
    assert not headless()
    assert not progress_bar(range(3), file=open("/dev/null", "w")).disable


def test_widget_outputs_finds_frozen_widgets():
    from nsrom_lib.pipeline import WIDGET_MIME, widget_outputs

    nb = {"cells": [
        {"cell_type": "code", "outputs": [{"output_type": "display_data",
                                           "data": {WIDGET_MIME: {}, "text/plain": "  0%|  | 0/3"}}]},
        {"cell_type": "code", "outputs": [{"output_type": "execute_result",
                                           "data": {"text/plain": "VBox(children=(HBox(...),))"}}]},
        {"cell_type": "code", "outputs": [{"output_type": "stream", "text": "fine"},
                                          {"output_type": "display_data", "data": {"image/png": "..."}}]},
    ]}
    found = widget_outputs(nb)
    assert [f.split(":")[0] for f in found] == ["cell 0", "cell 1"]
