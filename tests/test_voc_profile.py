"""The `voc` profile end to end, on a small PASCAL VOC 2012 tree laid out as it is downloaded
(`nsrom_lib.data.voc_tree.build_voc_tree`): SBD's `train_aug.txt` and gray `SegmentationClassAug/` masks inside
`VOCdevkit/VOC2012`, the saliency maps and `train_cls.txt` outside it, and stand-in ImageNet
weights in a temporary torch hub cache. `python -m nsrom_lib results` runs every stage through
`results` with the settings a user passes (data_root, saliency_dir, cls_list), at tiny sizes;
the dataset's files must be left exactly as they were. A missing piece fails at the data stage
with a DataError naming it and the setting that moves it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nsrom_lib.data.io import DataError
from nsrom_lib.data.voc_tree import build_voc_tree, tree_listing
from nsrom_lib.models.classifier import VGG16_WEIGHTS_FILE
from nsrom_lib.models.segmentation import RESNET_WEIGHTS_FILES
from nsrom_lib.pipeline.run import variant_stage
from nsrom_lib.pipeline.stages.pseudo import PSEUDO_SOURCES, pseudo_stage
from nsrom_lib.pipeline.stages.results import GAP_ROWS, LABEL_ROWS, RESULT_ROWS
from nsrom_lib.pipeline.stages.segmentation import SEG_MODELS

ROOT = Path(__file__).resolve().parent.parent

#: Tiny sizes for a CPU: every stage of the profile runs, each for a few seconds (cls_epochs 2:
#: OAA fuses from the second epoch). seg_crf stays as the profile has it (on).
TINY = dict(image_size=48, cls_epochs=2, iam_epochs=1, seg_epochs=1, cls_batch_size=8,
            iam_batch_size=8, seg_batch_size=8, oaa_snapshots=2, nsrm_kernel=3)


def _expected_stages() -> set[str]:
    """Every stage folder whose record a finished `results` stage leaves (warm-up off)."""
    stages = {"data", "results"}
    stages |= {variant_stage(s, g) for s in ("classifier", "iam", "maps", "pseudo", "masked")
               for g in (True, False)}
    stages |= {pseudo_stage(True, s) for s in PSEUDO_SOURCES}
    stages |= {spec["stage"] for spec in SEG_MODELS.values()}
    return stages


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """A torch hub cache holding random stand-ins for the ImageNet weights the `voc` profile
    loads, under torchvision's file names; TORCH_HOME points at it (subprocesses inherit it).
    The VGG-16 file holds the `features.*` tensors of `vgg16().state_dict()`, all that
    `load_vgg16_imagenet` reads; the ResNet one the whole state dict (`load_state_dict` is
    strict). The files (about 240 MB) are removed afterwards."""
    import torchvision

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).state_dict()
    torch.save({k: v for k, v in vgg.items() if k.startswith("features.")},
               checkpoints / VGG16_WEIGHTS_FILE)
    del vgg
    torch.save(torchvision.models.resnet101(weights=None).state_dict(),
               checkpoints / RESNET_WEIGHTS_FILES["resnet101"])
    yield home
    for p in checkpoints.iterdir():
        p.unlink()


def _user_settings(tree) -> list[str]:
    """The `--set` arguments of a user with the tree as downloaded."""
    return [f"data_root={tree.root}", f"saliency_dir={tree.saliency_dir}",
            f"cls_list={tree.cls_list}"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_voc_profile_runs_through_results_on_voc_as_downloaded(tmp_path, torch_home):
    tree = build_voc_tree(tmp_path / "datasets")
    before = tree_listing(tree.devkit, tree.saliency_dir, tree.cls_list)
    sets = _user_settings(tree) + [f"{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "nsrom_lib", "results", "--seeds", "0", "--profile", "voc",
           "--run-root", str(tmp_path / "runs"), "--name", "voc-tiny"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, f"exit {r.returncode} after {seconds:.0f} s\n{r.stdout}\n{r.stderr[-6000:]}"

    run_dir = tmp_path / "runs" / "voc-tiny" / "seed0"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["profile"] == "voc" and cfg["train_split"] == "train_aug"
    assert cfg["data_root"] == str(tree.root) and cfg["seg_crf"] is True
    assert cfg["backbone"] == "vgg16" and cfg["pretrained"] is True
    assert cfg["seg_backbone"] == "resnet101" and cfg["seg_pretrained"] is True

    # every stage record, and no other
    records = {str(p.parent.relative_to(run_dir)) for p in run_dir.rglob("record.json")}
    assert records == _expected_stages()
    for stage in records:
        rec = json.loads((run_dir / stage / "record.json").read_text())
        assert rec["stage"] == stage and rec["key"] and isinstance(rec["metrics"], dict), stage

    # the data stage found every piece where the settings put it, and reads them through a
    # view of links in the run folder
    data = json.loads((run_dir / "data" / "record.json").read_text())["metrics"]
    assert data["images"] == {"train": len(tree.train), "val": len(tree.val)}
    seg = tree.root.resolve() / "ImageSets" / "Segmentation"
    assert data["sources"]["train_split"] == str(seg / "train_aug.txt")
    assert data["sources"]["saliency_dir"] == str(tree.saliency_dir.resolve())
    assert data["sources"]["cls_list"] == str(tree.cls_list.resolve())
    view = run_dir / "data" / "view"
    files = [p for p in view.rglob("*") if not p.is_symlink() and not p.is_dir()]
    assert [p.name for p in files] == ["view.json"], files

    # the training split is SBD's train_aug (24 images), not VOC's train.txt (8)
    for stage in ("pseudo", "masked"):
        rec = json.loads((run_dir / stage / "record.json").read_text())
        assert rec["metrics"]["images"] == len(tree.train), stage
    assert sorted(p.stem for p in (run_dir / "seg1" / "train_pred").glob("*.png")) == sorted(tree.train)
    assert sorted(p.stem for p in (run_dir / "seg2" / "val_pred").glob("*.png")) == sorted(tree.val)

    metrics = json.loads((run_dir / "results" / "metrics.json").read_text())
    for row in RESULT_ROWS:
        m = metrics[row]
        assert 0 <= m["miou"] <= 1 and m["stage"] == SEG_MODELS[row]["stage"], row
        assert len(m["iou"]) == 21, row  # background and the 20 classes
    assert metrics["upper_bound"]["ratio_to_upper_bound"] == pytest.approx(1.0)
    for row in LABEL_ROWS:
        assert metrics[row]["stage"] == LABEL_ROWS[row][2], row
        assert metrics[row]["precision"] is not None, row  # measured against the train_aug masks
    assert {k.split(".", 1)[0] for k in metrics["gap"]} == set(GAP_ROWS)
    assert "monotone" in metrics["checks"]
    assert (run_dir / "results" / "ablation.png").is_file() and (run_dir / "report.md").is_file()
    assert (tmp_path / "runs" / "voc-tiny" / "summary.json").is_file()

    # the dataset, its saliency maps and class list are exactly as they were
    assert tree_listing(tree.devkit, tree.saliency_dir, tree.cls_list) == before


def _fails_at_data(run_dir: Path, tree, **overrides) -> str:
    """Run the seed in-process with `overrides` on the voc profile; the DataError's message.
    Nothing may be trained: the run stops at the data stage."""
    from nsrom_lib.pipeline import ensure_seed_results

    settings = dict(TINY, data_root=str(tree.root), **overrides)
    before = tree_listing(tree.devkit, tree.saliency_dir, tree.cls_list)
    with pytest.raises(DataError) as e:
        ensure_seed_results(run_dir, "voc", 0, settings, progress=False)
    assert not (run_dir / "data" / "record.json").exists()
    assert not (run_dir / "classifier").exists()
    assert tree_listing(tree.devkit, tree.saliency_dir, tree.cls_list) == before
    return str(e.value)


def test_voc_profile_names_a_missing_piece_and_its_setting(tmp_path):
    tree = build_voc_tree(tmp_path / "datasets", n_train=6, n_val=2)
    # no saliency_dir and no VOC2012/Saliency
    msg = _fails_at_data(tmp_path / "run_sal", tree, cls_list=str(tree.cls_list))
    assert str(tree.root.resolve() / "Saliency") in msg and "saliency_dir" in msg, msg
    # the class list the user names is not there
    gone = tmp_path / "datasets" / "elsewhere" / "train_cls.txt"
    msg = _fails_at_data(tmp_path / "run_cls", tree, saliency_dir=str(tree.saliency_dir),
                         cls_list=str(gone))
    assert str(gone.resolve()) in msg and "cls_list" in msg, msg
    # no class list given, and no GT masks of the training images to take the labels from
    # (VOC 2012 without SBD's SegmentationClassAug)
    voc_only = build_voc_tree(tmp_path / "voc_only", n_train=6, n_val=2)
    shutil.rmtree(voc_only.root / "SegmentationClassAug")
    msg = _fails_at_data(tmp_path / "run_masks", voc_only,
                         saliency_dir=str(voc_only.saliency_dir))
    assert "cls_list" in msg and str(voc_only.root.resolve() / "SegmentationClass") in msg, msg
