"""The settings of each step of the method, with their defaults and allowed ranges: written once.

One frozen dataclass per step of docs/method.md: `BEParams` (§3), `POMParams` (§4), `RuleParams`
(the 1% rule), `NSRMParams` (§6), and `TrainRecipe` for a training loop. The run configuration
(`config.RunConfig`, whose fields take their defaults from here and build these objects), the
`nsrom labels` options, the threshold explorer's sliders, the pipeline's stages and the label
functions all read them from this module, so a default or a range changes in one line.

Each field carries its range in its metadata (`lo`, `hi`, inclusive; None: unbounded) and a one-line
description; constructing an object with a value out of range raises ValueError naming the field,
the range and the default. No torch and no numpy here: the command line imports this module to
print its help.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BEParams", "POMParams", "RuleParams", "NSRMParams", "TrainRecipe", "setting",
           "bounds", "span", "describe", "BE", "POM", "RULE", "NSRM", "RECIPE"]


def setting(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "",
            choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its default, its inclusive range [lo, hi] (or choices) and a doc line."""
    return field(default=default, metadata=dict(lo=lo, hi=hi, doc=doc, choices=choices))


class _Params:
    """Shared behaviour: range checks on construction, `replace`, `as_dict`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(type(self).__name__, f, getattr(self, f.name))

    def replace(self, **changes: Any):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(owner: str, f: dataclasses.Field, value: Any) -> None:
    lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{owner}.{f.name}={value!r}: use one of {', '.join(choices)} "
                             f"(default {f.default!r}).")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{f.name}={value!r}: expected a number (default {f.default!r}).")
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{owner}.{f.name}={value!r}: use a value in {_span(lo, hi)} "
                         f"(default {f.default!r}).")


def _span(lo: float | None, hi: float | None) -> str:
    """An inclusive range as text: "[0, 1]", "[1, inf)"."""
    return (f"{'(-inf' if lo is None else f'[{lo:g}'}, "
            f"{'inf)' if hi is None else f'{hi:g}]'}")


def bounds(params: type | object, name: str) -> tuple[float | None, float | None]:
    """The inclusive range (lo, hi) of field `name` of a parameter class; None: unbounded."""
    meta = {f.name: f.metadata for f in dataclasses.fields(params)}[name]
    return meta["lo"], meta["hi"]


def span(params: type | object, name: str) -> str:
    """The inclusive range of field `name` as text, e.g. "[0, 1]"."""
    return _span(*bounds(params, name))


def describe(params: type | object, name: str) -> str:
    """The one-line description of field `name` (used by help texts and tooltips)."""
    return {f.name: f.metadata for f in dataclasses.fields(params)}[name]["doc"]


@dataclass(frozen=True)
class BEParams(_Params):
    """Background extraction (docs/method.md §3): the four thresholds on normalised scores."""

    fg: float = setting(0.3, 0.0, 1.0, "scores below this become 0 (background channel included)")
    conflict: float = setting(0.9, 0.0, 1.0, "two or more channels above this: ignore")
    bg: float = setting(32, 0, 256, "saliency (0..255) at or above this: a background pixel "
                                    "becomes ignore (256: never)")
    att: float = setting(0.8, 0.0, 1.0, "some OA-CAM strictly above this: a background pixel "
                                        "becomes ignore")


@dataclass(frozen=True)
class POMParams(_Params):
    """Potential object mining (docs/method.md §4): the floor of the top-quartile branch."""

    pom: float = setting(0.3, 0.0, 1.0, "the TQ branch looks at the CAM values above this")


@dataclass(frozen=True)
class RuleParams(_Params):
    """The 1% rule (docs/method.md, "Where the official code differs from the paper's text")."""

    ratio: float = setting(0.01, 0.0, 1.0, "labels with fewer labelled pixels than this share "
                                           "of the image become all ignore")


@dataclass(frozen=True)
class NSRMParams(_Params):
    """Non-salient region masking (docs/method.md §6): the side of the dilation box."""

    kernel: int = setting(30, 1, None, "side of the dilation box in px (the reference's, at "
                                       "PASCAL VOC's image size)")


@dataclass(frozen=True)
class TrainRecipe(_Params):
    """How a network is trained: optimiser, learning rate and schedule, regularisation, batches."""

    optimizer: str = setting("adam", doc="'adam' (from scratch) or 'sgd' (the reference's)",
                             choices=("adam", "sgd"))
    lr: float = setting(1e-3, 1e-12, None, "base learning rate")
    schedule: str = setting("cosine", doc="learning-rate schedule over the epochs",
                            choices=("cosine", "step", "constant", "poly"))
    weight_decay: float = setting(1e-4, 0.0, None, "L2 weight decay")
    jitter: float = setting(0.1, 0.0, None, "colour jitter strength (brightness, contrast, "
                                            "saturation)")
    batch_size: int = setting(32, 1, None, "images per batch")


#: The defaults, as objects: `BE.fg` is the reference's foreground threshold.
BE, POM, RULE, NSRM, RECIPE = BEParams(), POMParams(), RuleParams(), NSRMParams(), TrainRecipe()
