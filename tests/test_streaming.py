"""Reading a split on demand changes nothing that is computed.

The stages read their images and segmentation labels batch by batch through a torch
DataLoader (`data.split`, `loop.read_batches`) instead of stacking the whole split in memory.
Here the way they read it before, every image decoded, resized and stacked (and every label map
resized and stacked), is kept as the reference: the decoded images, the batches, the trained
weights, the losses and the predictions must be bit-identical to it, with and without DataLoader
worker processes (smoke profile, CPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nsrom_lib import loop
from nsrom_lib import train as T
from nsrom_lib.data.io import read_label_png
from nsrom_lib.data.split import LabelFiles
from nsrom_lib.data.transforms import Resize
from nsrom_lib.data.voc import VOCSegDataset, gt_mask_dir
from nsrom_lib.pipeline import build_classifier, build_segmenter, ensure_data, open_run

#: The training images' side here: the smoke data is 64 px, so every image is resized.
SIZE = 48


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    run = open_run(tmp_path_factory.mktemp("stream") / "run", "smoke")
    return run, ensure_data(run, progress=False)


def _preloaded_split(root, split: str, num_classes: int, image_size: int | None) -> dict:
    """A split as the stages held it before: every image decoded, resized and stacked."""
    ds = VOCSegDataset(root, split, num_classes=num_classes, with_saliency=False, with_mask=False)
    resize = Resize(image_size) if image_size else None
    images, labels, label_ids, sizes = [], [], [], []
    for i in range(len(ds)):
        raw = ds.get_raw(i)
        img = torch.from_numpy(raw["image"]).permute(2, 0, 1)  # (3, H, W) uint8
        sizes.append(tuple(img.shape[-2:]))
        if resize is not None and tuple(img.shape[-2:]) != resize.size:
            img = resize({"image": img.float() / 255})["image"].mul(255).round().clamp(0, 255)
            img = img.to(torch.uint8)
        images.append(img)
        labels.append(torch.from_numpy(raw["label"]))
        label_ids.append(list(raw["label_ids"]))
    return dict(names=list(ds.names), images=torch.stack(images), labels=torch.stack(labels),
                label_ids=label_ids, sizes=sizes)


def _preloaded_labels(paths, size: tuple[int, int]) -> torch.Tensor:
    """Label maps as the segmentation stages held them before: resized (nearest), stacked."""
    out = []
    for p in paths:
        t = torch.from_numpy(read_label_png(p))
        if tuple(t.shape) != tuple(size):
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)
        out.append(t)
    return torch.stack(out)  # (N, S, S) uint8


@pytest.mark.parametrize("image_size", [None, 40, SIZE, 80])
def test_split_images_decode_exactly_as_the_preloaded_split(smoke, image_size):
    run, root = smoke
    cfg = run.cfg
    old = _preloaded_split(root, "train", cfg.num_classes, image_size)
    new = T.load_split(root, "train", cfg.num_classes, image_size)
    assert new["names"] == old["names"] and new["label_ids"] == old["label_ids"]
    assert new["sizes"] == old["sizes"] and torch.equal(new["labels"], old["labels"])
    images = new["images"]
    assert len(images) == len(old["names"])
    assert torch.equal(torch.stack([images[i] for i in range(len(images))]), old["images"])
    assert torch.equal(T.load_split_tensors(root, "train", cfg.num_classes, image_size)["images"],
                       old["images"])
    # through the DataLoader, in a shuffled order, with and without worker processes
    batches = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).split(7)
    for workers in (0, 2):
        got = list(loop.read_batches(images, batches, num_workers=workers))
        assert len(got) == len(batches)
        for idx, x in zip(batches, got, strict=True):
            assert x.dtype == torch.uint8 and torch.equal(x, old["images"][idx])


def test_reading_moves_no_random_number_generator(smoke):
    run, root = smoke
    images = T.load_split(root, "train", run.cfg.num_classes, SIZE)["images"]
    state, gen = torch.get_rng_state(), torch.Generator().manual_seed(3)
    gen_state = gen.get_state()
    for workers in (0, 2):
        list(loop.read_batches(images, torch.arange(len(images)).split(16), num_workers=workers))
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(gen.get_state(), gen_state)


def test_label_files_are_the_preloaded_labels(smoke):
    run, root = smoke
    names = T.load_split(root, "train", run.cfg.num_classes)["names"]
    paths = [gt_mask_dir(root) / f"{n}.png" for n in names]
    for size in [(SIZE, SIZE), (64, 64), (80, 80)]:
        files = LabelFiles(paths, size, "GT mask")
        assert torch.equal(torch.stack([files[i] for i in range(len(files))]),
                           _preloaded_labels(paths, size))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_the_classifier_trains_the_same_from_files_as_from_memory(smoke):
    run, root = smoke
    cfg = run.cfg
    old = _preloaded_split(root, "train", cfg.num_classes, SIZE)
    files = T.load_split(root, "train", cfg.num_classes, SIZE)["images"]
    kw = dict(epochs=2, **cfg.recipe("classifier").as_dict(), seed=cfg.seed, snapshot_indices=[0, 5],
              probe_indices=range(8), progress=False)

    def trained(images, workers=0):
        torch.manual_seed(0)
        return T.train_classifier(build_classifier(cfg), images, old["labels"], num_workers=workers,
                                  **kw)

    ref = trained(old["images"])
    for workers in (0, 2):
        out = trained(files, workers)
        _same_weights(ref["model"], out["model"])
        assert [h["loss"] for h in out["history"]] == [h["loss"] for h in ref["history"]]
        assert torch.equal(out["accumulator"].maps(), ref["accumulator"].maps())
        assert torch.equal(out["snapshots"]["maps"], ref["snapshots"]["maps"])
        assert torch.equal(out["probe"]["maps"], ref["probe"]["maps"])
    logits, cams = T.predict_cams(ref["model"], old["images"], batch_size=16)
    logits_f, cams_f = T.predict_cams(ref["model"], files, batch_size=16, num_workers=2)
    assert torch.equal(logits, logits_f) and torch.equal(cams, cams_f)


def test_the_segmentation_model_trains_and_predicts_the_same_from_files(smoke):
    run, root = smoke
    cfg = run.cfg
    old = _preloaded_split(root, "train", cfg.num_classes, SIZE)
    files = T.load_split(root, "train", cfg.num_classes, SIZE)["images"]
    paths = [gt_mask_dir(root) / f"{n}.png" for n in old["names"]]
    kw = dict(epochs=2, **cfg.recipe("segmentation").as_dict(), seed=cfg.seed + 2,
              scale=(1 - cfg.seg_scale, 1 + cfg.seg_scale), progress=False)

    def trained(images, labels, workers=0):
        torch.manual_seed(0)
        return T.train_segmentation(build_segmenter(cfg), images, labels, num_workers=workers, **kw)

    ref = trained(old["images"], _preloaded_labels(paths, (SIZE, SIZE)))
    for workers in (0, 2):
        out = trained(files, LabelFiles(paths, (SIZE, SIZE), "GT mask"), workers)
        _same_weights(ref["model"], out["model"])
        assert [h["loss"] for h in out["history"]] == [h["loss"] for h in ref["history"]]
    pred = T.predict_segmentation(ref["model"], old["images"], batch_size=16, flip=True)
    pred_f = T.predict_segmentation(ref["model"], files, batch_size=16, flip=True, num_workers=2)
    assert torch.equal(pred, pred_f)
    with pytest.raises(ValueError, match="do not match"):
        trained(files, LabelFiles(paths[:-1], (SIZE, SIZE)))


def test_loader_workers_of_the_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert T.loader_workers(-1, cpu) == 0 and T.loader_workers(3, cpu) == 3
    assert 0 <= T.loader_workers(-1, cuda) <= 8 and T.loader_workers(0, cuda) == 0
