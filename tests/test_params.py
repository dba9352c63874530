"""nsrom_lib.params: every step's defaults and ranges, written once and used everywhere."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nsrom_lib import params as P

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cls", [P.BEParams, P.POMParams, P.RuleParams, P.NSRMParams])
def test_every_numeric_setting_rejects_values_outside_its_range(cls):
    for f in dataclasses.fields(cls):
        lo, hi = P.bounds(cls, f.name)
        assert P.describe(cls, f.name), f"{cls.__name__}.{f.name} has no description"
        for bad in [v for v in (None if lo is None else lo - 1, None if hi is None else hi + 1,
                                float("nan")) if v is not None]:
            with pytest.raises(ValueError, match=f"{cls.__name__}.{f.name}="):
                cls(**{f.name: bad})
        if lo is not None:
            assert getattr(cls(**{f.name: lo}), f.name) == lo  # the bounds are inclusive


def test_recipe_choices_and_replace():
    with pytest.raises(ValueError, match="use one of adam, sgd"):
        P.TrainRecipe(optimizer="lbfgs")
    r = P.RECIPE.replace(lr=0.01)
    assert (r.lr, P.RECIPE.lr) == (0.01, P.TrainRecipe().lr)
    with pytest.raises(ValueError, match="TrainRecipe.batch_size=0"):
        P.RECIPE.replace(batch_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.BE.fg = 0.5  # type: ignore[misc]


def test_params_import_no_torch():
    code = "import sys, nsrom_lib.params; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# Every consumer must read its defaults from nsrom_lib.params: in a fresh interpreter, change the
# defaults there first, then import the consumers; each must show the changed values.
_PATCHED = """
import dataclasses, inspect, json, sys
import nsrom_lib.params as P
P.BE = P.BEParams(fg=0.21, conflict=0.71, bg=41, att=0.61)
P.POM = P.POMParams(pom=0.17)
P.RULE = P.RuleParams(ratio=0.03)
P.NSRM = P.NSRMParams(kernel=13)
P.RECIPE = P.TrainRecipe(jitter=0.07, lr=0.002)
from nsrom_lib import labels as L, train, widgets
from nsrom_lib.cli import _parser
from nsrom_lib.config import RunConfig
from nsrom_lib.data.label_defaults import MASKED_DEFAULTS, PSEUDO_DEFAULTS

def defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}

cfg = RunConfig()
ps = _parser().parse_args(["labels", "pseudo", "--list", "x", "--saliency", "x", "--oacam", "x",
                           "--cam", "x", "--out", "x"])
ms = _parser().parse_args(["labels", "masked", "--list", "x", "--pred", "x", "--pseudo", "x",
                           "--saliency", "x", "--out", "x"])
out = dict(
    config=[cfg.be_fg, cfg.be_conflict, cfg.be_bg, cfg.be_att, cfg.pom_threshold,
            cfg.min_label_ratio, cfg.jitter, cfg.cls_lr],
    cli_pseudo=[ps.fg, ps.conflict, ps.bg, ps.att, ps.pom, ps.min_ratio],
    cli_masked=[ms.kernel, ms.min_ratio],
    label_defaults=[PSEUDO_DEFAULTS[k] for k in ("fg", "conflict", "bg", "att", "pom", "ratio")]
                   + [MASKED_DEFAULTS["kernel"], MASKED_DEFAULTS["ratio"]],
    sliders=[widgets.THRESHOLDS[k][0] for k in ("fg", "conflict", "bg", "att", "pom", "kernel")],
    explorer=[defaults(widgets.explore_labels)[k]
              for k in ("fg", "conflict", "bg", "att", "pom", "kernel", "ratio")],
    train=[defaults(train.train_classifier)["jitter"], defaults(train.train_iam)["lr"]],
)
for name in ("background_extraction", "background_extraction_ref", "initial_labels",
             "initial_label_ref", "pseudo_labels", "pseudo_label_ref",
             "potential_object_mining", "potential_object_mining_ref",
             "non_salient_region_masking", "non_salient_region_masking_ref"):
    d = defaults(getattr(L, name))
    out["labels." + name] = {k: d[k] for k in ("fg", "conflict", "bg", "att", "pom", "kernel",
                                                "ratio") if k in d}
print(json.dumps(out))
"""


def test_every_consumer_takes_its_defaults_from_params():
    import json

    r = subprocess.run([sys.executable, "-c", _PATCHED], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["config"] == [0.21, 0.71, 41, 0.61, 0.17, 0.03, 0.07, 0.002]
    assert out["cli_pseudo"] == [0.21, 0.71, 41, 0.61, 0.17, 0.03]
    assert out["cli_masked"] == [13, 0.03]
    assert out["label_defaults"] == [0.21, 0.71, 41, 0.61, 0.17, 0.03, 13, 0.03]
    assert out["sliders"] == [0.21, 0.71, 41, 0.61, 0.17, 13]
    assert out["explorer"] == [0.21, 0.71, 41, 0.61, 0.17, 13, 0.03]
    assert out["train"] == [0.07, 0.002]
    patched = dict(fg=0.21, conflict=0.71, bg=41, att=0.61, pom=0.17, kernel=13, ratio=0.03)
    for name, got in out.items():
        if name.startswith("labels."):
            assert got and got == {k: patched[k] for k in got}, name
