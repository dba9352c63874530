"""The threshold explorer, driven by setting slider values (no browser): labels equal the
references, and ignore share, coverage, precision and the overlays follow the sliders."""

from __future__ import annotations

import numpy as np
import pytest

from nsrom_lib import labels as L
from nsrom_lib.bench import gt_derived_maps
from nsrom_lib.widgets import ThresholdExplorer, explore_labels, explorer_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """SynthVOC smoke training images with blurred-GT maps and GT as the round-1 prediction."""
    from nsrom_lib.config import make_config
    from nsrom_lib.data.stats import load_split_arrays
    from nsrom_lib.data.synthvoc import generate_synthvoc
    from nsrom_lib.pipeline import synthvoc_config_for

    root = tmp_path_factory.mktemp("synthvoc_smoke")
    cfg = make_config("smoke")
    generate_synthvoc(root, synthvoc_config_for(cfg), progress=False)
    arrays = load_split_arrays(root, "train", limit=32)
    C = cfg.num_classes
    present = np.zeros((len(arrays["names"]), C), bool)
    for i, cl in enumerate(arrays["classes"]):
        present[i, cl] = True
    oa_cam, cam = gt_derived_maps(arrays["mask"], present)
    pred = np.where(arrays["mask"] == 255, 0, arrays["mask"]).astype(np.uint8)
    return explorer_inputs(arrays, oa_cam, cam, C, pred=pred)


def test_explore_labels_matches_references(inputs):
    th = dict(fg=0.25, conflict=0.85, bg=40, att=0.7, pom=0.35, kernel=9)
    res = explore_labels(inputs, **th)
    assert set(res["labels"]) == {"initial", "pseudo", "masked"}
    C = inputs["present"].shape[1]
    for i in range(0, len(inputs["sal"]), 5):
        cl = np.nonzero(inputs["present"][i])[0].tolist()
        oa, cam, sal = inputs["oa_cam"][i, cl], inputs["cam"][i, cl], inputs["sal"][i]
        be = dict(fg=0.25, conflict=0.85, bg=40, att=0.7)
        np.testing.assert_array_equal(
            res["labels"]["initial"][i], L.initial_label_ref(sal, oa, cl, C, **be)
        )
        pseudo = L.pseudo_label_ref(sal, oa, cam, cl, C, pom=0.35, **be)
        np.testing.assert_array_equal(res["labels"]["pseudo"][i], pseudo)
        np.testing.assert_array_equal(
            res["labels"]["masked"][i],
            L.non_salient_region_masking_ref(inputs["pred"][i], pseudo, sal, cl, kernel=9),
        )
    for m in res["metrics"].values():
        assert {"precision", "coverage", "miou", "ignore_share", "nonsalient_recall"} <= set(m)
        assert 0 <= m["coverage"] <= 1 and 0 <= m["precision"] <= 1


def test_sliders_drive_the_outputs(inputs):
    ex = ThresholdExplorer(inputs, show=3)
    assert set(ex.sliders) == {"fg", "conflict", "bg", "att", "pom", "kernel"}
    first = ex.result["metrics"]
    table, image = ex.table.value, ex.image.value
    assert "coverage" in table and image[:4] == b"\x89PNG"

    # att lower: more background pixels with an OA-CAM above it -> more ignore, less coverage
    ex.sliders["att"].value = 0.3
    m = ex.result["metrics"]["initial"]
    assert m["ignore_share"] > first["initial"]["ignore_share"]
    assert m["coverage"] < first["initial"]["coverage"]
    assert ex.table.value != table and ex.image.value != image
    assert ex.history[-1]["att"] == pytest.approx(0.3)
    ex.sliders["att"].value = 0.8
    assert ex.result["metrics"]["initial"]["ignore_share"] == first["initial"]["ignore_share"]

    # bg higher: fewer pixels salient enough to be ignored
    ex.sliders["bg"].value = 200
    assert ex.result["metrics"]["initial"]["ignore_share"] < first["initial"]["ignore_share"]
    ex.sliders["bg"].value = 32

    # pom lower: more potential objects in the pseudo labels; the initial labels do not change
    ex.sliders["pom"].value = 0.05
    res = ex.result
    assert res["metrics"]["pseudo"]["ignore_share"] >= first["pseudo"]["ignore_share"]
    assert res["metrics"]["initial"] == first["initial"]

    # kernel smaller: NSRM masks more of the complex images
    ex.sliders["pom"].value = 0.3
    ex.sliders["kernel"].value = 3
    assert ex.result["metrics"]["masked"]["ignore_share"] > first["masked"]["ignore_share"]
    assert ex.result["metrics"]["pseudo"] == first["pseudo"]
    assert len(ex.history) == 8


def test_explorer_without_gt_or_pred(inputs):
    bare = {k: inputs[k] for k in ("sal", "oa_cam", "cam", "present")}
    ex = ThresholdExplorer(bare, show=2, fg=0.4)
    assert "kernel" not in ex.sliders and ex.sliders["fg"].value == pytest.approx(0.4)
    assert set(ex.result["metrics"]["pseudo"]) == {"ignore_share"}
    with pytest.raises(ValueError, match="unknown threshold"):
        ThresholdExplorer(bare, alpha=1)


def test_update_is_fast_on_a_subset(inputs):
    res = explore_labels(inputs)  # 32 images of 64 px, everything included
    assert res["seconds"] < 5  # about 0.05 s when the machine is idle


def test_explorer_picture_names_its_columns_and_colours(inputs):
    from nsrom_lib.widgets import render_overlays

    labels = explore_labels(inputs)["labels"]
    plain = render_overlays(inputs, labels, [0, 1], scale=2)
    titled = render_overlays(inputs, labels, [0, 1], scale=2, classes=["a", "b", "c"])
    H = inputs["sal"].shape[1]
    grid_h = (2 * H + 2) * 2
    assert plain.shape[0] > grid_h, "a title strip above the overlays"
    assert (plain[: plain.shape[0] - grid_h] < 128).any(), "the title strip holds text"
    assert titled.shape[0] > plain.shape[0], "a legend strip under the overlays"
    from nsrom_lib.viz import PALETTE

    legend = titled[plain.shape[0]:]
    for cls in (1, 2, 3):  # each class's swatch is in the legend
        assert (legend == PALETTE[cls]).all(axis=-1).any()


def test_explorer_is_static_when_headless(inputs, monkeypatch):
    """Under papermill the saved copy must not hold a widget that needs a live kernel."""
    from nsrom_lib.pipeline import WIDGET_MIME
    from nsrom_lib.progress import HEADLESS_ENV

    ex = ThresholdExplorer(inputs, show=2, classes=["a", "b", "c"])
    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    assert WIDGET_MIME in ex._repr_mimebundle_()
    monkeypatch.setenv(HEADLESS_ENV, "1")
    static = ex._repr_mimebundle_()
    assert WIDGET_MIME not in static
    assert "data:image/png;base64," in static["text/html"] and "att = 0.8" in static["text/html"]


def test_pom_switch_picker_and_defaults(inputs):
    from nsrom_lib.widgets import pick_images

    ex = ThresholdExplorer(inputs, show=2, classes=["a", "b", "c"], att=0.7)
    first, image = ex.result["metrics"], ex.image.value
    assert "nonsalient_as_background" in first["initial"]
    assert "default 0.7" in ex.widget.children[0].children[1].children[0].children[1].value
    assert 'data-stage="initial-default"' in ex.table.value
    # POM off: the pseudo labels are the BE labels
    ex.pom_on.value = False
    np.testing.assert_array_equal(ex.result["labels"]["pseudo"], ex.result["labels"]["initial"])
    assert ex.image.value != image
    # the picker shows other images, without recomputing the labels
    n = len(ex.history)
    complex_idx = pick_images(inputs, "complex", 2)
    assert complex_idx and all(inputs["present"][i].sum() >= 2 for i in complex_idx)
    before = ex.image.value
    ex.picker.value = "complex"
    assert ex.indices == complex_idx and len(ex.history) == n
    assert (ex.image.value != before) == (complex_idx != [0, 1])
    ex.cam_class.value = 2
    assert ex.image.value != before
    # back to the defaults in one update
    ex.set(att=0.3, fg=0.5)
    assert ex.thresholds()["att"] == pytest.approx(0.3) and len(ex.history) == n + 1
    ex.reset.click()
    assert ex.pom_on.value and ex.thresholds()["att"] == pytest.approx(0.7)
    assert ex.result["metrics"] == ex.at_defaults["metrics"]
