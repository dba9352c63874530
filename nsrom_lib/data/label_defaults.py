"""The defaults of the `nsrom labels pseudo` and `nsrom labels masked` options, as dicts.

Built from `nsrom_lib.params` (where every default and range is written); kept free of torch and
numpy so that `nsrom labels ... --help` can show them cheaply.
"""

from __future__ import annotations

from nsrom_lib.params import BE, NSRM, POM, RULE

__all__ = ["PSEUDO_DEFAULTS", "MASKED_DEFAULTS"]

#: BE + POM (docs/method.md §3, §4) and the 1% rule.
PSEUDO_DEFAULTS: dict[str, float] = {**BE.as_dict(), **POM.as_dict(), **RULE.as_dict()}
#: NSRM (docs/method.md §6): box kernel and the 1% rule.
MASKED_DEFAULTS: dict[str, float] = {**NSRM.as_dict(), **RULE.as_dict()}
