"""`nsrom bench memory`: the measuring child process, the table, and bad arguments."""

from __future__ import annotations

import subprocess
import sys

from nsrom_lib.bench_memory import MEMORY_SETTINGS, _measure, format_bench_memory


def test_a_child_reports_its_own_peak_memory(tmp_path):
    floor = _measure("floor", tmp_path / "run", dict(MEMORY_SETTINGS, data_root=str(tmp_path)))
    assert 50 < floor["peak_mib"] < 4096  # python + torch imported, nothing computed
    assert floor["seconds"] > 0


def test_the_table_gives_each_step_and_the_growth():
    sizes = {n: {s: {"peak_mib": p * n / 100 + 500, "seconds": 1.0}
                 for s, p in (("floor", 0), ("pseudo", 1), ("seg1", 2))} for n in (100, 400)}
    r = dict(cpu="x", n_val=5, sizes=sizes, growth={"pseudo": 504 / 501, "seg1": 508 / 502})
    text = format_bench_memory(r)
    assert "100 images" in text and "400 images" in text
    assert "seg1" in text.splitlines()[-1] and "1.01" in text.splitlines()[-1]


def test_bad_sizes_are_refused_with_the_fix():
    out = subprocess.run([sys.executable, "-m", "nsrom_lib", "bench", "memory", "--images", "5x"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "500,2000" in out.stderr
