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
