"""`make explore`: which run it shows, the server command line, and the app on a smoke run."""

from __future__ import annotations

import os
import time

import pytest

from nsrom_lib.app import N_ENV, RUN_ENV, choose_run, is_finished, voila_command, voila_env


def _fake_run(path, finished=True):
    (path / "pseudo").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if finished:
        (path / "pseudo" / "record.json").write_text("{}")
    return path


def test_choose_run_prefers_default_then_the_newest(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("NSROM_RUNS_DIR", str(runs))
    with pytest.raises(FileNotFoundError, match="no finished run"):
        choose_run(build=False)
    _fake_run(runs / "half", finished=False)
    old = _fake_run(runs / "old")
    new = _fake_run(runs / "new")
    t = time.time()
    os.utime(old / "pseudo" / "record.json", (t - 100, t - 100))
    assert not is_finished(runs / "half") and is_finished(new)
    assert choose_run(build=False) == new
    default = _fake_run(runs / "default")
    os.utime(default / "pseudo" / "record.json", (t - 200, t - 200))
    assert choose_run(build=False) == default
    assert choose_run(old) == old
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        choose_run(runs / "half")


def test_server_listens_on_localhost_with_live_widgets(tmp_path, monkeypatch):
    from nsrom_lib.progress import HEADLESS_ENV

    cmd = voila_command(8123)
    assert "--Voila.ip=127.0.0.1" in cmd and "--port=8123" in cmd
    assert any(c.endswith("explore.ipynb") for c in cmd)
    monkeypatch.setenv(HEADLESS_ENV, "1")
    env = voila_env(tmp_path, 100)
    assert HEADLESS_ENV not in env and env[RUN_ENV] == str(tmp_path) and env[N_ENV] == "100"


def test_the_app_explorer_on_a_smoke_run(smoke_run):
    from nsrom_lib.app import explorer

    ex = explorer(smoke_run, n=10, show=2)
    assert len(ex.inputs["sal"]) == 10 and ex.image.value[:4] == b"\x89PNG"
    assert set(ex.sliders) >= {"fg", "conflict", "bg", "att", "pom"}
    assert "coverage" in ex.table.value
