"""Segmentation rounds (docs/method.md §5–§8): the training loop's augmentation, loss and resume,
the `seg1` / `masked` / `seg2` / `results` stages on the smoke profile, their stage keys, the
masked labels against the per-image NSRM reference, and metrics.json / report.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nsrom_lib import labels as L
from nsrom_lib import train as T
from nsrom_lib.config import ConfigError, make_config
from nsrom_lib.data.io import read_gray_png
from nsrom_lib.data.voc import read_cls_list, read_split
from nsrom_lib.device import cpu_model, describe_machine
from nsrom_lib.metrics import confusion_matrix, iou_from_confusion
from nsrom_lib.models.segmentation import DeepLabV2
from nsrom_lib.pipeline import (
    GAP_ROWS,
    LABEL_ROWS,
    RESULT_ROWS,
    SEG_MODELS,
    ensure_data,
    ensure_masked,
    ensure_results,
    ensure_segmentation,
    gap_table,
    load_ground_truth,
    load_labels,
    load_masked,
    load_predictions,
    nsrm_kernel_for,
    open_run,
    read_metrics,
    results_checks,
)

# ----------------------------------------------------------------------------- library


def test_augmentation_keeps_image_and_label_aligned():
    # the label is a function of the image: class 1 where the red channel is high
    g = torch.Generator().manual_seed(0)
    imgs = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    labs = torch.zeros(6, 32, 32, dtype=torch.uint8)
    for i in range(6):
        y0, x0 = 3 + i, 20 - 2 * i
        imgs[i, 0, y0 : y0 + 8, x0 : x0 + 9] = 255
        labs[i, y0 : y0 + 8, x0 : x0 + 9] = 1
    for _ in range(5):
        x, y = T.augment_segmentation(imgs, labs, g, scale=(1.0, 1.0), flip=True)
        assert x.shape == (6, 3, 32, 32) and y.shape == (6, 32, 32) and y.dtype == torch.int64
        red = x[:, 0] > 0  # normalised: above the mean only on the square
        assert torch.equal(red, y == 1)
    # with rescaling: labels stay in {0, 1, 255}; padding (zoom out) is ignore, never class 0
    seen_pad = False
    for _ in range(10):
        x, y = T.augment_segmentation(imgs, labs, g, scale=(0.5, 0.7), flip=True)
        assert set(y.unique().tolist()) <= {0, 1, 255}
        pad = y == 255  # (B, H, W): only padding is 255 here
        seen_pad |= bool(pad.any())
        assert torch.all(x.permute(0, 2, 3, 1)[pad].abs() < 1e-6)  # padded with the mean colour
    assert seen_pad


def test_segmentation_loss_ignores_255_and_survives_an_empty_batch():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255, dtype=torch.long)
    loss = T.segmentation_loss(logits, target)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    target[0, 0, 0] = 2
    expected = torch.nn.functional.cross_entropy(logits[:1, :, :1, :1], target[:1, :1, :1])
    torch.testing.assert_close(T.segmentation_loss(logits, target), expected)


def _tiny_seg_data(n=12, size=32):
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 255, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labs = (imgs[:, 0] > 128).to(torch.uint8)  # (N, S, S) learnable from the red channel
    labs[:, :2] = 255
    return imgs, labs


def test_segmentation_training_learns_and_resumes_bitwise(tmp_path):
    imgs, labs = _tiny_seg_data()
    kw = dict(epochs=4, batch_size=4, lr=3e-3, seed=3, progress=False, tag="t")

    def fresh():
        torch.manual_seed(0)
        return DeepLabV2(1, width=16, image_size=32)

    full = T.train_segmentation(fresh(), imgs, labs, checkpoint=tmp_path / "a.pt", **kw)
    assert full["completed"] and full["history"][-1]["loss"] < full["history"][0]["loss"]
    # interrupted after 2 epochs, resumed with a new model object: the same weights at the end
    part = T.train_segmentation(fresh(), imgs, labs, checkpoint=tmp_path / "b.pt", max_epochs=2, **kw)
    assert not part["completed"] and part["epochs_done"] == 2
    resumed = T.train_segmentation(fresh(), imgs, labs, checkpoint=tmp_path / "b.pt", **kw)
    assert resumed["completed"] and len(resumed["history"]) == 4
    for (k, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="do not match"):
        T.train_segmentation(fresh(), imgs, labs[:3], **kw)


def test_predict_segmentation_flip_and_shapes():
    imgs, _ = _tiny_seg_data(5)
    torch.manual_seed(0)
    net = DeepLabV2(2, width=16, image_size=32).eval()
    p = T.predict_segmentation(net, imgs, batch_size=2)
    assert p.shape == (5, 32, 32) and p.dtype == torch.uint8 and int(p.max()) <= 2
    with torch.no_grad():
        direct = net(T.normalize_images(imgs)).argmax(1).to(torch.uint8)
    assert torch.equal(p, direct)
    pf = T.predict_segmentation(net, imgs, flip=True, scales=(1.0, 0.75))
    assert pf.shape == p.shape


def test_seg_config_validation():
    assert make_config("default").seg_output_stride in (4, 8)
    for bad in (dict(seg_backbone="vit"), dict(seg_output_stride=16), dict(seg_scale=1.5),
                dict(nsrm_kernel=-1), dict(seg_optimizer="rmsprop"), dict(seg_epochs=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_config("smoke", **bad)


def test_nsrm_kernel_rule():
    assert nsrm_kernel_for(make_config("default")) == 6  # 30 px at 500 px -> 96 px
    assert nsrm_kernel_for(make_config("smoke")) == 4
    assert nsrm_kernel_for(make_config("smoke", nsrm_kernel=9)) == 9
    assert nsrm_kernel_for(make_config("voc", data_root="/x")) == 30


# ----------------------------------------------------------------------------- stages (smoke)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    run = open_run(tmp_path_factory.mktemp("seg") / "run", "smoke")
    rec = ensure_results(run, progress=False)
    return run, rec


def test_every_model_has_val_predictions_and_metrics(smoke_results):
    run, _ = smoke_results
    root = ensure_data(run)
    val_names = read_split(root, "val")
    gt = load_ground_truth(root, "val", val_names)
    for which, spec in SEG_MODELS.items():
        rec = run.record(spec["stage"])
        assert rec is not None, which
        preds = load_predictions(run, which, "val")
        assert preds.shape == (len(val_names), run.cfg.image_size, run.cfg.image_size)
        # the record's mIoU is the one of the stored PNGs
        conf = sum(confusion_matrix(p, g, run.cfg.num_classes + 1) for p, g in
                   zip(preds, gt["masks"], strict=True))
        assert rec["metrics"]["miou"] == pytest.approx(iou_from_confusion(conf)[0], abs=1e-4)
        assert 0 <= rec["metrics"]["nonsalient_recall"] <= 1
    # only the round-1 models that feed NSRM keep train predictions
    assert load_predictions(run, "pom_round1", "train").shape[0] == len(read_split(root, "train"))
    with pytest.raises(FileNotFoundError, match="train predictions"):
        load_predictions(run, "upper_bound", "train")


def test_measures_added_batch_by_batch_equal_those_of_the_whole_split(smoke_results):
    """The stages measure their predictions and maps batch by batch as they make them; over
    the stored files, all at once, the measures are the same numbers."""
    from nsrom_lib.metrics import instance_recall
    from nsrom_lib.pipeline import MAP_KINDS, load_map_dicts
    from nsrom_lib.pipeline.stages.common import label_metrics, map_quality

    run, _ = smoke_results
    root = ensure_data(run)
    n_labels = run.cfg.num_classes + 1
    train, val = read_split(root, "train"), read_split(root, "val")
    gt_train, gt_val = load_ground_truth(root, "train", train), load_ground_truth(root, "val", val)
    rec = run.record("seg1")["metrics"]
    train_pred = list(load_predictions(run, "pom_round1", "train"))
    assert rec["train_pred"] == label_metrics(train_pred, gt_train, n_labels)
    preds = list(load_predictions(run, "pom_round1", "val"))
    conf = sum(confusion_matrix(p, g, n_labels) for p, g in zip(preds, gt_val["masks"], strict=True))
    m, iou = iou_from_confusion(conf)
    assert rec["miou"] == round(m, 4)
    assert rec["iou"] == [None if np.isnan(v) else round(float(v), 4) for v in iou]
    for salient, key in ((False, "nonsalient_recall"), (True, "salient_recall")):
        r = instance_recall(preds, gt_val["instances"], gt_val["objects"], salient=salient)
        assert rec[key] == round(r, 4), key
    classes = [read_cls_list(run.dir / "masked" / "train_cls.txt")[n] for n in train]
    maps_rec, cls_rec = run.record("maps")["metrics"], run.record("classifier")["metrics"]
    for kind in MAP_KINDS:
        assert maps_rec[kind] == map_quality(load_map_dicts(run, kind, train, classes), gt_train)
    assert cls_rec["cam"] == maps_rec["cam"] and cls_rec["accumulated"] == maps_rec["accumulated"]


def test_masked_labels_equal_the_nsrm_reference(smoke_results):
    run, _ = smoke_results
    root = ensure_data(run)
    listed = read_cls_list(run.dir / "masked" / "train_cls.txt")
    names = list(listed)
    masked = load_masked(run, names)
    preds = load_predictions(run, "pom_round1", "train", names)
    pseudo = load_labels(run, "pseudo", names)
    k = nsrm_kernel_for(run.cfg)
    assert run.record("masked")["metrics"]["kernel"] == k
    for i, n in enumerate(names):
        sal = read_gray_png(root / "Saliency" / f"{n}.png")
        ref = L.non_salient_region_masking_ref(preds[i], pseudo[i], sal, listed[n], kernel=k,
                                               ratio=run.cfg.min_label_ratio)
        np.testing.assert_array_equal(masked[i], ref, err_msg=n)
    # the GloRe-off pipeline has its own labels, from its own round-1 model
    off = load_masked(run, names, glore=False)
    assert off.shape == masked.shape
    assert (run.dir / "seg1" / "no_glore" / "train_pred").is_dir()


def test_metrics_json_and_report(smoke_results):
    run, rec = smoke_results
    m = json.loads((run.dir / "results" / "metrics.json").read_text())
    for k in RESULT_ROWS:
        e = m[k]
        assert {"miou", "ratio_to_upper_bound", "nonsalient_recall", "stage"} <= set(e)
        assert 0 <= e["miou"] <= 1 and (run.dir / e["stage"] / "record.json").is_file()
        assert e["miou"] == run.record(e["stage"])["metrics"]["miou"]
        assert (run.dir / e["stage"] / "val_pred").is_dir()
    assert m["upper_bound"]["ratio_to_upper_bound"] == 1.0
    for k in LABEL_ROWS:
        assert {"precision", "coverage", "miou", "nonsalient_recall", "stage"} <= set(m[k])
        assert 0 <= m[k]["coverage"] <= 1
    assert m["masked_labels"]["precision"] == run.record("masked")["metrics"]["masked"]["precision"]
    # the checks are recomputed from the numbers, never stored by hand
    assert m["checks"] == json.loads(json.dumps(results_checks(m)))
    fake = json.loads(json.dumps(m))
    fake["be_round1"]["miou"], fake["pom_round1"]["miou"], fake["nsrm_round2"]["miou"] = 0.1, 0.2, 0.3
    assert results_checks(fake)["monotone"]["ok"]
    fake["pom_round1"]["miou"] = 0.35
    assert not results_checks(fake)["monotone"]["ok"]
    report = (run.dir / "report.md").read_text()
    assert "profile `smoke`" in report and "round 2 on NSRM labels" in report
    assert f"{m['nsrm_round2']['miou']:.3f}" in report and "`seg2/no_glore`" in report
    # the machine the results were computed on, from the record; one machine: no Machines section
    assert f"Machine: {describe_machine(run.record('results'))};" in report
    assert f"CPU {cpu_model()}" in report and "## Machines" not in report
    assert (run.dir / "results" / "ablation.png").stat().st_size > 1000


def test_gap_measures_from_the_stored_predictions(smoke_results):
    from nsrom_lib.metrics import GAP_MEASURES, instance_background_share

    run, rec = smoke_results
    m = json.loads((run.dir / "results" / "metrics.json").read_text())
    gap = m["gap"]
    assert rec["metrics"]["gap"] == gap  # the stage record keeps it too
    extra = ("gap", "gap_nonsalient_void", "gap_from_nonsalient")
    assert set(gap) == {f"{k}.{g}" for k in GAP_ROWS for g in GAP_MEASURES + extra}
    up = gap["upper_bound.miou"]
    assert gap["upper_bound.gap"] == 0.0 and gap["upper_bound.gap_nonsalient_void"] == 0.0
    root = ensure_data(run)
    gt = load_ground_truth(root, "val", read_split(root, "val"))
    for k in GAP_ROWS:
        assert gap[f"{k}.miou"] == pytest.approx(m[k]["miou"], abs=1e-4)  # the record's mIoU
        assert gap[f"{k}.gap"] == pytest.approx(up - gap[f"{k}.miou"], abs=2e-4)
        assert gap[f"{k}.gap_from_nonsalient"] == pytest.approx(
            gap[f"{k}.gap"] - gap[f"{k}.gap_nonsalient_void"], abs=2e-4)
        assert 0 < gap[f"{k}.nonsalient_share"] < 1
        # the non-salient objects are those of nonsalient_recall: the same pixels, pooled
        preds = load_predictions(run, k, "val")
        ns_bg = instance_background_share(preds, gt["instances"], gt["objects"], salient=False)
        assert gap[f"{k}.nonsalient_as_background"] == pytest.approx(ns_bg, abs=1e-4)
        lost = np.mean([((g != 0) & (p == 0)).sum() for p, g in zip(preds, gt["masks"], strict=True)])
        objects = np.mean([(g != 0).sum() for g in gt["masks"]])
        assert gap[f"{k}.lost_salient"] + gap[f"{k}.lost_nonsalient"] == pytest.approx(
            lost / objects, abs=2e-4)
    report = (run.dir / "report.md").read_text()
    assert "## Where the gap to the upper bound goes" in report and gap_table(m) in report
    assert (run.dir / "results" / "gap.png").stat().st_size > 1000


def test_an_older_metrics_json_gets_the_gap(smoke_results):
    run, _ = smoke_results
    path = run.dir / "results" / "metrics.json"
    full = json.loads(path.read_text())
    old = {k: v for k, v in full.items() if k != "gap"}
    path.write_text(json.dumps(old))
    assert read_metrics(run)["gap"] == full["gap"]  # recomputed from the val predictions
    assert json.loads(path.read_text()) == full  # and written back


def test_gap_table_shows_every_model_and_na_without_instances():
    rows = ("upper_bound", "be_round1", "pom_round1", "nsrm_round2", "nsrm_round2_no_glore",
            "pom_round1_no_glore")
    m = {k: dict(title=f"model {k}", stage=f"st/{k}") for k in rows}
    m["gap"] = {"nsrm_round2.gap": 0.25, "nsrm_round2.gap_from_nonsalient": None}
    table = gap_table(m)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) and "| gap to upper bound |" in lines[0]
    row = next(line for line in lines if "`st/nsrm_round2`" in line)
    assert "| 0.250 |" in row and "n/a" in row
    assert "0.250" not in table.replace(row, "")
    assert gap_table({k: v for k, v in m.items() if k != "gap"}).count("n/a") > len(rows)


def test_the_oaa_ablation_rows_and_an_older_results_record(smoke_results, monkeypatch,
                                                           record_property):
    from nsrom_lib import compare as CMP
    from nsrom_lib.pipeline import ensure_seed_results, results_table
    from nsrom_lib.pipeline import run as RUN

    run, _ = smoke_results
    m = json.loads((run.dir / "results" / "metrics.json").read_text())
    cam, oa = run.record("seg1/cam"), run.record("seg1")
    record_property("seg1/cam seconds", cam["seconds"])
    record_property("seg1 seconds", oa["seconds"])
    for src in ("cam", "accumulated"):
        record_property(f"pseudo/{src} seconds", run.record(f"pseudo/{src}")["seconds"])
    # round 1 on the CAM-source labels: their coverage, not that of the OA-CAM ones
    assert cam["metrics"]["which"] == "pom_round1_cam" and m["pom_round1_cam"]["stage"] == "seg1/cam"
    assert m["pom_round1_cam"]["miou"] == cam["metrics"]["miou"]
    cam_labels = load_labels(run, "pseudo", source="cam")
    assert cam["metrics"]["label_coverage"] == pytest.approx((cam_labels != 255).mean(), abs=1e-4)
    assert (cam_labels != load_labels(run, "pseudo")).any()
    assert not (run.dir / "seg1" / "cam" / "train_pred").exists()  # it feeds no NSRM
    for src in ("cam", "accumulated"):
        rec = run.record(f"pseudo/{src}")["metrics"]
        for kind, row in (("initial", f"be_labels_{src}"), ("pseudo", f"pom_labels_{src}")):
            assert m[row]["stage"] == f"pseudo/{src}/{kind}"
            assert m[row]["precision"] == rec[kind]["precision"]
            assert m[row]["nonsalient_recall"] == rec[kind]["nonsalient_recall"]
    report = (run.dir / "report.md").read_text()
    assert "round 1 on BE + POM labels from the CAM (OAA off) (`seg1/cam`)" in report
    assert "BE + POM labels from the accumulated maps (`pseudo/accumulated/pseudo`)" in report
    # the OAA step of this run: OA-CAM round 1 minus CAM round 1
    step = CMP.compare_runs([run.dir])["steps"]["OAA (OA-CAM - CAM, r1)"]
    assert step["values"] == [pytest.approx(m["pom_round1"]["miou"] - m["pom_round1_cam"]["miou"])]
    # a results record of the version before these rows: recomputed, nothing else retrained
    keys = {s: run.record(s)["key"] for s in ("seg1", "seg1/cam", "pseudo", "masked", "seg2")}
    monkeypatch.setattr(RUN, "STAGE_VERSIONS", {})
    old_key = run.stage_key("results")
    monkeypatch.undo()
    assert old_key != run.record("results")["key"] == run.stage_key("results")
    res = run.record("results")
    (run.dir / "results" / "record.json").write_text(json.dumps(dict(res, key=old_key)))
    old = {k: v for k, v in m.items() if k not in ("pom_round1_cam", "pom_labels_cam")}
    (run.dir / "results" / "metrics.json").write_text(json.dumps(old))
    assert "`seg1/cam`" not in results_table(old)  # an older metrics.json: the row left out
    _, reused = ensure_seed_results(run.dir, "smoke", run.cfg.seed)
    assert not reused and json.loads((run.dir / "results" / "metrics.json").read_text()) == m
    assert {s: run.record(s)["key"] for s in keys} == keys


def test_stage_keys_retrain_only_downstream(smoke_results, capfd):
    run, _ = smoke_results
    capfd.readouterr()
    before = {w: run.record(s["stage"])["key"] for w, s in SEG_MODELS.items()}
    masked_key = run.record("masked")["key"]
    # a new kernel: masked and round 2 are redone; round 1 and the upper bound are not
    run2 = open_run(run.dir, "smoke", nsrm_kernel=9)
    ensure_segmentation(run2, "nsrm_round2", progress=False)
    assert run2.record("masked")["key"] != masked_key and run2.record("masked")["metrics"]["kernel"] == 9
    assert run2.record("seg2")["key"] != before["nsrm_round2"]
    assert run2.record("seg1")["key"] == before["pom_round1"]
    # a new BE threshold: the upper bound (GT masks) stays, round 1 is redone
    run3 = open_run(run.dir, "smoke", be_att=0.5)
    ensure_segmentation(run3, "upper_bound", progress=False)
    assert run3.record("seg1/gt")["key"] == before["upper_bound"]
    ensure_masked(run3, progress=False)
    assert run3.record("seg1")["key"] != before["pom_round1"]
    # progress=False reaches the upstream stages these calls had to recompute: no bars at all
    err = capfd.readouterr().err
    assert "it/s" not in err and "%|" not in err, err[-500:]


def test_cli_run_prints_the_ablation_and_adds_notebook_times(smoke_results, capsys):
    from nsrom_lib.cli import _print_results

    run, _ = smoke_results
    _print_results(run.dir, "smoke", {}, [{"notebook": "08_results.ipynb", "seconds": 12.5}])
    out = capsys.readouterr().out
    m = json.loads((run.dir / "results" / "metrics.json").read_text())
    assert "round 2 on NSRM labels" in out and f"{m['nsrm_round2']['miou']:.3f}" in out
    assert sum(line.strip().startswith(("met", "MISSED")) for line in out.splitlines()) == len(m["checks"])
    report = (run.dir / "report.md").read_text()
    assert "| 08_results.ipynb | 12.5 |" in report
