"""`nsrom bench memory`: peak memory of the label stage and the first segmentation round as the
split grows, on drawn PASCAL VOC trees of VOC's image sizes.

For each split size, a VOC tree laid out as downloaded (`data.voc_tree`, about 500 x 375 px
JPEGs) is drawn, the stages up to the maps are run with tiny networks (what they learn does not
matter here, only what the data path holds), and then `pseudo` and `seg1` each run in a fresh
process that reports its own peak resident memory (`ru_maxrss`) when it ends. A process that
only imports the library and opens the run gives the floor. A stage whose peak grows with the
split holds the split in memory; one that streams stays flat.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MEMORY_SETTINGS", "bench_memory", "format_bench_memory"]

#: The `voc` profile at its image size (321 px) with networks small enough for a CPU: the data
#: path is the profile's, the networks are not.
MEMORY_SETTINGS: dict[str, Any] = dict(
    backbone="small", pretrained=False, width=16, output_stride=8, cls_optimizer="adam",
    cls_lr=1e-3, cls_schedule="cosine", cls_epochs=2, cls_batch_size=16, iam_epochs=1,
    iam_batch_size=16, oaa_snapshots=0, seg_backbone="small", seg_pretrained=False, seg_width=16,
    seg_optimizer="adam", seg_lr=1e-3, seg_epochs=1, seg_batch_size=16, seg_crf=False)

#: What each measured process runs after opening the run (`run`): nothing (the floor), the
#: upstream stages, or one stage.
_STEPS = {
    "floor": "pass",
    "upstream": "P.ensure_maps(run, progress=False)",
    "pseudo": "P.ensure_pseudo(run, progress=False)",
    "seg1": "P.ensure_segmentation(run, 'pom_round1', progress=False)",
}

_CHILD = """
import json, resource, sys
from nsrom_lib import pipeline as P
run = P.open_run(sys.argv[1], "voc", **json.loads(sys.argv[2]))
{step}
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _measure(step: str, run_dir: Path, settings: dict[str, Any]) -> dict[str, float]:
    """Run `_STEPS[step]` in a fresh Python process; its peak RSS (MiB) and wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(step=_STEPS[step]), str(run_dir),
                           json.dumps(settings)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench memory: step {step} failed in {run_dir}:\n{proc.stderr[-3000:]}")
    kib = int(next(line.split()[1] for line in proc.stdout.splitlines()
                   if line.startswith("PEAK_KIB")))
    return dict(peak_mib=round(kib / 1024, 1), seconds=round(time.perf_counter() - t0, 1))


def bench_memory(sizes: tuple[int, ...] = (500, 2000), out: str | Path = "runs/bench-memory",
                 n_val: int = 50, seed: int = 0) -> dict[str, Any]:
    """Peak RSS of the floor, `pseudo` and `seg1` for each training split size in `sizes`.

    out: where the trees (`voc-<n>/`) and runs (`run-<n>/`) go; both are reused when present,
    except the `pseudo` and `seg1` stages, which are computed again each time.
    Returns {"cpu", "settings", "sizes": {n: {"floor", "pseudo", "seg1"}}, "growth": {stage:
    peak at the largest size / peak at the smallest}}.
    """
    from nsrom_lib.data.voc_tree import build_voc_tree
    from nsrom_lib.device import cpu_model

    out = Path(out)
    result: dict[str, Any] = dict(cpu=cpu_model(), settings=MEMORY_SETTINGS, n_val=n_val,
                                  sizes={})
    for n in sizes:
        tree_dir = out / f"voc-{n}"
        if not (tree_dir / "train_cls.txt").is_file():
            tree = build_voc_tree(tree_dir, n_train=n, n_val=n_val, seed=seed, voc_sizes=True)
            root, sal, cls = tree.root, tree.saliency_dir, tree.cls_list
        else:
            root, sal, cls = (tree_dir / "VOCdevkit" / "VOC2012", tree_dir / "saliency_aug",
                              tree_dir / "train_cls.txt")
        settings = dict(MEMORY_SETTINGS, data_root=str(root), saliency_dir=str(sal),
                        cls_list=str(cls), seed=seed)
        run_dir = out / f"run-{n}"
        _measure("upstream", run_dir, settings)
        for stage in ("pseudo", "seg1"):  # measured computing, not reusing an earlier record
            shutil.rmtree(run_dir / stage, ignore_errors=True)
        result["sizes"][n] = {step: _measure(step, run_dir, settings)
                              for step in ("floor", "pseudo", "seg1")}
    small, large = result["sizes"][min(sizes)], result["sizes"][max(sizes)]
    result["growth"] = {s: round(large[s]["peak_mib"] / small[s]["peak_mib"], 3)
                        for s in ("pseudo", "seg1")}
    return result


def format_bench_memory(r: dict[str, Any]) -> str:
    """A plain-text table of `bench_memory`'s result."""
    sizes = sorted(r["sizes"], key=int)
    lines = [f"nsrom bench memory, CPU {r['cpu']}: peak resident memory (MiB) of one process "
             f"per step, on drawn VOC trees of VOC-sized JPEGs ({r['n_val']} val images), the "
             "voc profile's 321 px with small networks",
             "",
             f"{'step':<8}" + "".join(f"{f'{n} images':>14}" for n in sizes)
             + f"{'largest/smallest':>18}"]
    for step in ("floor", "pseudo", "seg1"):
        row = "".join(f"{r['sizes'][n][step]['peak_mib']:>14.1f}" for n in sizes)
        growth = r["growth"].get(step)
        lines.append(f"{step:<8}{row}" + (f"{growth:>18.2f}" if growth else ""))
    return "\n".join(lines)
