"""Trains a tiny classifier or segmentation network with the library's loops and saves what it
learnt: `python tests/ddp_worker.py OUT cls|seg`, alone or under torchrun (tests/test_distributed.py).
Rank 0 saves the weights, the loss history and, for the classifier, the accumulated maps."""

import sys

import torch

from nsrom_lib import distributed as dist
from nsrom_lib import train as T
from nsrom_lib.models.classifier import Classifier
from nsrom_lib.models.segmentation import DeepLabV2

#: 19 images in batches of 8: two full batches and one of 3, which two processes share 2 + 1.
N, BATCH, SIZE, CLASSES = 19, 8, 32, 4


def main(out: str, kind: str) -> None:
    dist.init(torch.device("cpu"))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    T.seed_everything(0)
    if kind == "cls":  # colour jitter off: no augmentation draw, the order alone is random
        labels = (torch.rand(N, CLASSES, generator=g) < 0.4).float()
        model = Classifier(CLASSES, width=8)
        res = T.train_classifier(model, images, labels, epochs=3, batch_size=BATCH, jitter=0.0,
                                 seed=0, progress=False, accumulate_from=1, probe_indices=[0, 5])
        acc = res["accumulator"]
        extra = dict(maps=acc.accumulated.clone(), exists=acc.exists.clone(),
                     counts=acc.counts.clone(), probe=res["probe"]["maps"].clone())
    else:
        labels = torch.randint(0, CLASSES + 1, (N, SIZE, SIZE), generator=g, dtype=torch.uint8)
        model = DeepLabV2(CLASSES, backbone="small", width=8, image_size=SIZE)
        res = T.train_segmentation(model, images, labels, epochs=2, batch_size=BATCH,
                                   scale=(1.0, 1.0), flip=False, seed=0, progress=False)
        extra = {}
    if dist.is_main():
        torch.save(dict(state=model.state_dict(), loss=[h["loss"] for h in res["history"]],
                        **extra), out)
    dist.finish()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
