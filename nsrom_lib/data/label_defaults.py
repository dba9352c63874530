"""Reference thresholds of the `pseudo` and `masked` labels: the one place they are set.

Kept free of torch and numpy so that `nsrom labels ... --help` can show them cheaply;
`nsrom_lib.data.maps_io` re-exports both dicts and `nsrom_lib.cli` takes its defaults from them.
"""

from __future__ import annotations

__all__ = ["PSEUDO_DEFAULTS", "MASKED_DEFAULTS"]

#: Reference thresholds of BE + POM (docs/method.md §3, §4) and the 1% rule.
PSEUDO_DEFAULTS: dict[str, float] = dict(fg=0.3, conflict=0.9, bg=32, att=0.8, pom=0.3, ratio=0.01)
#: Reference settings of NSRM (docs/method.md §6): box kernel and the 1% rule.
MASKED_DEFAULTS: dict[str, float] = dict(kernel=30, ratio=0.01)
