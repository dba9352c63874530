"""Pseudo labels: background extraction (BE), potential object mining (POM) and
non-salient region masking (NSRM), docs/method.md §3, §4 and §6 (Yao et al., CVPR 2021,
on top of OAA's background extraction), as the public implementation runs them, pixel
for pixel.

One file per step, each with two versions side by side:

- ``be.py``: BE and the initial labels; ``pom.py``: the POM thresholds T_c, POM and the
  pseudo labels; ``nsrm.py``: the box dilation and NSRM; ``_common.py``: the label values,
  input checks, map normalisation and the 1% rule.
- ``*_ref`` functions: one image at a time, plain numpy, written to be read next to
  docs/method.md. They are the specification.
- batched torch functions on (B, ...) tensors: the same results bit for bit, on whatever
  device the inputs are on, with no loop over images or pixels and no copy to the host.

Label values: 0 = background, c + 1 = foreground class c (0-based class id),
255 = ignore. Maps (saliency, OA-CAM, CAM) are raw 8-bit values 0..255, as read from
their PNGs; every normalisation happens in here.

Where the 1% rule (docs/method.md, "Where the official code differs from the paper's
text": a label whose pixels with values 1..254 are strictly fewer than ``ratio`` of the
image becomes all 255) is applied:

- ``background_extraction[_ref]`` and ``potential_object_mining[_ref]`` do NOT apply
  it: they are the raw stages, and POM must see the BE label as it is;
- ``initial_label[s][_ref]`` = BE + rule (the "initial" label, ``initial/``);
- ``pseudo_label[s][_ref]`` = BE + POM + rule (the POM pseudo label, ``pseudo/``);
- ``non_salient_region_masking[_ref]`` applies it at its end, for single-class images
  as well (the masked pseudo label).

Applying the rule after BE as well as after POM would give the same pseudo labels:
POM only turns background into 255, so it never lifts an image over the threshold.
"""

from nsrom_lib.labels._common import (
    IGNORE,
    MapsLike,
    min_label_ratio_rule,
    min_label_ratio_rule_ref,
    normalize_map_ref,
    normalize_maps,
    torch_threads,
)
from nsrom_lib.labels.be import (
    background_extraction,
    background_extraction_ref,
    initial_label_ref,
    initial_labels,
)
from nsrom_lib.labels.nsrm import (
    box_dilation,
    box_dilation_ref,
    non_salient_region_masking,
    non_salient_region_masking_ref,
)
from nsrom_lib.labels.pom import (
    pom_threshold_ref,
    pom_thresholds,
    potential_object_mining,
    potential_object_mining_ref,
    pseudo_label_ref,
    pseudo_labels,
)

__all__ = [
    # per-image numpy references
    "normalize_map_ref",
    "background_extraction_ref",
    "pom_threshold_ref",
    "potential_object_mining_ref",
    "min_label_ratio_rule_ref",
    "initial_label_ref",
    "pseudo_label_ref",
    "box_dilation_ref",
    "non_salient_region_masking_ref",
    # batched torch
    "normalize_maps",
    "background_extraction",
    "pom_thresholds",
    "potential_object_mining",
    "min_label_ratio_rule",
    "initial_labels",
    "pseudo_labels",
    "box_dilation",
    "non_salient_region_masking",
    "torch_threads",
    # label values and map types
    "IGNORE",
    "MapsLike",
]
