"""The `labels` commands' worker processes: order, errors, start-up, Ctrl-C and a killed parent.

On a CPU a fresh `python -m nsrom_lib labels ...` forks its workers before torch loads; inside
a process that has torch already (these tests, a notebook) it uses threads instead. Both give
the same files, byte for byte.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nsrom_lib.parallel import OrderedMap, fork_is_safe, process_pool

ROOT = Path(__file__).resolve().parents[1]


def _run(*code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_process_pool_keeps_order_raises_in_turn_and_survives_a_map():
    with process_pool(2) as pool:
        assert list(OrderedMap(abs, range(-20, 0), 2, executor=pool)) == list(range(20, 0, -1))
        assert os.getpid() not in {pool.submit(os.getpid).result() for _ in range(4)}
        got = []
        with pytest.raises(ValueError, match="math domain error"):
            for x in OrderedMap(math.sqrt, [4, 9, -1, 16, 25], 2, executor=pool):
                got.append(x)
        assert got == [2.0, 3.0]  # the error comes in its item's turn, the rest is cancelled
        assert pool.submit(abs, -3).result() == 3  # closing the map left the pool working


def test_leaving_the_pool_by_an_exception_stops_running_tasks_at_once():
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), process_pool(1) as pool:
        pool.submit(time.sleep, 60)
        time.sleep(1.0)  # the task is running
        raise KeyboardInterrupt
    assert time.monotonic() - t0 < 10  # not the minute the task would take


def test_leaving_the_pool_by_an_exception_leaves_no_pool_thread_behind():
    # An interpreter that exits while the pool's thread is still closing its pipes races with
    # it and may print "OSError: Bad file descriptor" at exit (a CLI error, exit 2, with a
    # traceback under it). Leaving the block waits for that thread.
    with pytest.raises(ValueError), process_pool(2) as pool:
        pool.submit(time.sleep, 60)
        raise ValueError("bad input")
    left = [t for t in threading.enumerate() if "ExecutorManager" in type(t).__name__]
    assert left == []


def test_workers_run_their_initializer():
    import torch

    from nsrom_lib.label_folders import _start_label_worker

    with process_pool(1, _start_label_worker, (3,)) as pool:
        assert pool.submit(torch.get_num_threads).result() == 3


def test_fork_only_before_torch_loads():
    r = _run("from nsrom_lib.parallel import fork_is_safe",
             "from nsrom_lib.label_folders import worker_pool",
             "assert fork_is_safe()",
             "pool = worker_pool(2)",
             "assert pool is not None and pool._mp_context.get_start_method() == 'fork'",
             "pool.shutdown()",
             "import torch",
             "assert not fork_is_safe() and worker_pool(2) is None")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not fork_is_safe()  # this test process has torch: the labels commands use threads


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """40 generated VOC-sized cases in the official layout, with maps on the general path."""
    from nsrom_lib.bench_official import make_official_inputs

    root = tmp_path_factory.mktemp("official")
    make_official_inputs(root, 40, (375, 500), seed=3, maps="partial")
    return root


def _labels(root: Path, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nsrom_lib", "labels", "pseudo", "--list",
            str(root / "data/train_cls.txt"), "--saliency", str(root / "data/saliency_aug"),
            "--oacam", str(root / "runs/exp2/attention"), "--cam", str(root / "runs/exp1/attention"),
            "--out", str(root / out), "--quiet", *extra]  # fmt: skip


def test_worker_processes_write_the_same_files_as_one_thread(inputs):
    runs = {}
    for out, extra in (("procs", ["--workers", "2", "--batch-size", "3"]), ("one", ["--workers", "1"])):
        r = subprocess.run(_labels(inputs, out, *extra, "--json"), capture_output=True, text=True,
                           cwd=ROOT, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        runs[out] = json.loads(r.stdout)
    assert runs["procs"]["processes"] is True and runs["procs"]["workers"] == 2
    assert runs["one"]["processes"] is False
    names = sorted(p.name for p in (inputs / "one").glob("*.png"))
    assert len(names) == 40 and names == sorted(p.name for p in (inputs / "procs").iterdir())
    for n in names:
        assert (inputs / "procs" / n).read_bytes() == (inputs / "one" / n).read_bytes()


def _children(pid: int) -> list[int]:
    """The live child processes of pid (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_with_workers(inputs: Path, out: str) -> tuple[subprocess.Popen, list[int]]:
    p = subprocess.Popen(_labels(inputs, out, "--workers", "2", "--batch-size", "2"),
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(kids := _children(p.pid)) < 2:
        assert p.poll() is None and time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    time.sleep(1.0)  # the workers are loading torch or computing
    return p, kids


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := [k for k in pids if _alive(k)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_ctrl_c_stops_the_workers_at_once_and_writes_nothing(inputs):
    p, kids = _start_with_workers(inputs, "interrupted")
    os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    t0 = time.monotonic()
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert time.monotonic() - t0 < 5
    assert "nsrom: error: interrupted" in err and "Traceback" not in err
    assert not _wait_gone(kids, 5)
    assert not (inputs / "interrupted").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed(inputs):
    p, kids = _start_with_workers(inputs, "killed")
    p.kill()  # SIGKILL to the parent only: no cleanup runs there
    p.communicate(timeout=30)
    assert not _wait_gone(kids, 5), "workers outlived their parent"
    assert not list((inputs / "killed").glob("*.png"))
