"""Configuration, profiles, `--set`, the run folder and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nsrom_lib.config import PROFILES, ConfigError, make_config, parse_overrides, parse_set
from nsrom_lib.pipeline import Run, ensure_data, open_run, resolve_device

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsrom_lib", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, **kw)


def test_profiles_resolve():
    for name in PROFILES:
        if name == "voc":
            cfg = make_config(name, data_root="/somewhere")
            assert cfg.num_classes == 20
        else:
            cfg = make_config(name)
            assert cfg.n_train >= 1 and cfg.image_size >= 32
    assert make_config("default").n_train > make_config("quick").n_train > make_config("smoke").n_train


def test_set_values_are_typed_and_checked():
    cfg = make_config("smoke", **parse_set(["seed=3", "n_train=10", "data_root=none"]))
    assert cfg.seed == 3 and cfg.n_train == 10 and cfg.data_root is None
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        make_config("fast")
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):
        make_config("smoke", lr="0.1")
    with pytest.raises(ConfigError, match="seed"):
        make_config("smoke", seed="three")
    with pytest.raises(ConfigError, match="n_train"):
        make_config("smoke", n_train=2.5)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["seed"])
    with pytest.raises(ConfigError, match="data_root"):
        make_config("voc")


@pytest.mark.parametrize(
    "value, want",
    [
        ({"n_train": 800, "seed": 1}, {"n_train": 800, "seed": 1}),  # the notebooks' default form
        ({}, {}),
        (None, {}),
        ("", {}),
        ('{"n_train": 800, "seed": 1}', {"n_train": 800, "seed": 1}),  # JSON object string
        ("n_train=800", {"n_train": "800"}),  # papermill -p overrides n_train=800
        (" n_train=800 , seed=1", {"n_train": "800", "seed": "1"}),
        (["n_train=800", "seed=1,width=16"], {"n_train": "800", "seed": "1", "width": "16"}),
        ('extra={"a": 1, "b": 2},seed=3', {"extra": '{"a": 1, "b": 2}', "seed": "3"}),
    ],
)
def test_parse_overrides_accepts_dicts_json_and_key_values(value, want):
    got = parse_overrides(value)
    assert got == want
    if isinstance(value, dict):
        assert got is value


def test_parse_overrides_feeds_make_config():
    for value in ('{"n_train": 20, "seed": 2}', "n_train=20,seed=2", ["n_train=20", "seed=2"]):
        cfg = make_config("smoke", **parse_overrides(value))
        assert (cfg.n_train, cfg.seed) == (20, 2)
    cfg = make_config("smoke", **parse_overrides('extra={"a": 1, "b": 2}'))
    assert cfg.extra == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "value, named",
    [
        (5, "overrides=5 (int)"),
        (1.5, "overrides=1.5 (float)"),
        ("[1,2]", "overrides='[1,2]' is a JSON list"),
        ("5", "overrides='5' is a JSON int"),
        ('{"n_train": 800', "is not valid JSON"),
        ("n_train", "'n_train' is not key=value"),
        ("=800", "'=800' is not key=value"),
        (["n_train=800", 3], "item 3 is not a key=value string"),
        ({1, 2}, "(set)"),
    ],
)
def test_parse_overrides_rejects_other_values_with_an_example(value, named):
    with pytest.raises(ConfigError) as e:
        parse_overrides(value)
    msg = str(e.value)
    assert named in msg
    assert 'overrides={"n_train": 800' in msg and "-p overrides 'n_train=800" in msg


def test_run_records_and_skip(tmp_path):
    run = open_run(tmp_path / "r", "smoke", seed=1)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["seed"] == 1
    calls = []
    run.ensure("pseudo", lambda: calls.append(1) or {"x": 1})
    run.ensure("pseudo", lambda: calls.append(1) or {"x": 1})
    assert calls == [1] and run.record("pseudo")["metrics"] == {"x": 1}
    # another configuration invalidates the record; the device does not
    assert open_run(tmp_path / "r", "smoke", seed=1, device="cpu").is_done("pseudo")
    assert not open_run(tmp_path / "r", "smoke", seed=2).is_done("pseudo")
    with pytest.raises(ValueError, match="unknown stage"):
        run.stage_dir("nope")


def test_data_stage_generates_once_and_regenerates_if_deleted(tmp_path):
    run = open_run(tmp_path / "r", "smoke")
    root = ensure_data(run, progress=False)
    assert (root / "synthvoc.json").is_file() and run.is_done("data")
    assert ensure_data(run, progress=False) == root
    (root / "synthvoc.json").unlink()  # dataset lost: the stage must redo it
    assert ensure_data(run, progress=False) == root and (root / "synthvoc.json").is_file()


def test_data_root_missing_is_a_clear_error(tmp_path):
    from nsrom_lib.data.io import DataError

    run = open_run(tmp_path / "r", "smoke", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere"):
        ensure_data(run)


def test_cuda_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_unwritable_run_dir_names_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="file"):
        Run(blocker / "run", make_config("smoke"))


def test_cli_help_does_not_import_torch():
    code = ("import sys; from nsrom_lib import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "run" in r.stdout and "data" in r.stdout


def test_cli_synthvoc_and_stats(tmp_path):
    out = tmp_path / "sv"
    r = _cli("data", "synthvoc", "--out", str(out), "--profile", "smoke", "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert "64 images" in r.stdout and (out / "synthvoc.json").is_file()
    assert json.loads((out / "synthvoc.json").read_text())["config"]["seed"] == 2
    r = _cli("data", "stats", "--root", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 48


def test_cli_bad_input_exits_nonzero_with_message(tmp_path):
    r = _cli("data", "synthvoc", "--out", str(tmp_path / "x"), "--profile", "nope")
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr
    r = _cli("run", "--profile", "smoke", "--set", "colour=red", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "unknown config key 'colour'" in r.stderr
    r = _cli("data", "stats", "--root", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr


def test_cli_run_executes_notebooks_and_summarises(tmp_path):
    run_dir = tmp_path / "run"
    r = _cli("run", "--profile", "smoke", "--run-dir", str(run_dir), "--only", "00")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Summary" in r.stdout and "00_synthetic_data.ipynb" in r.stdout
    executed = run_dir / "notebooks" / "00_synthetic_data.ipynb"
    nb = json.loads(executed.read_text())
    assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["notebooks"][0]["notebook"] == "00_synthetic_data.ipynb"
    assert (run_dir / "data" / "record.json").is_file()


def test_stage_keys_follow_the_dataset_content(tmp_path, monkeypatch):
    import nsrom_lib.data.synthvoc as synthvoc

    run = open_run(tmp_path / "r", "smoke")
    before = {s: run.stage_key(s) for s in ("data", "classifier", "pseudo")}
    monkeypatch.setattr(synthvoc, "GENERATOR_VERSION", synthvoc.GENERATOR_VERSION + 1)
    after = {s: run.stage_key(s) for s in before}
    assert all(before[s] != after[s] for s in before)
    other = open_run(tmp_path / "r2", "smoke", data_root=str(tmp_path))
    assert other.stage_key("classifier") != before["classifier"]


def test_open_run_takes_the_notebooks_overrides_parameter(tmp_path):
    # what papermill passes for `-p overrides n_train=20` (a string), and a dict
    assert open_run(tmp_path / "a", "smoke", overrides="n_train=20,seed=3").cfg.n_train == 20
    run = open_run(tmp_path / "b", "smoke", seed=None, overrides={"n_val": 5})
    assert run.cfg.n_val == 5 and run.cfg.seed == 0
    # the same key given as a parameter and in overrides: fine if equal, refused if not
    assert open_run(tmp_path / "c", "smoke", seed=2, overrides="seed=2").cfg.seed == 2
    with pytest.raises(ConfigError, match="'seed' is given twice"):
        open_run(tmp_path / "d", "smoke", seed=0, overrides={"seed": 1})
    with pytest.raises(ConfigError, match="overrides=5"):
        open_run(tmp_path / "e", "smoke", overrides=5)
    with pytest.raises(ConfigError, match="unknown config key 'n_trian'"):
        open_run(tmp_path / "f", "smoke", overrides={"n_trian": 3})


def test_reopening_a_run_folder_with_other_settings_warns(tmp_path, caplog):
    import logging

    from nsrom_lib.pipeline import open_run

    d = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="nsrom_lib.pipeline"):
        open_run(d, "smoke")  # a new folder: nothing to compare with
        open_run(d, "smoke", device="cpu", num_threads=1)  # where / how fast: not results
        assert not caplog.records
        run = open_run(d, "smoke", overrides={"cls_epochs": 4})
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "cls_epochs=3 -> 4" in msg and str(d) in msg and "--run-dir" in msg
    assert len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nsrom_lib.pipeline"):
        again = open_run(d, "smoke", cls_epochs=4)  # config.json now holds cls_epochs=4
    assert not caplog.records
    assert run._warn_if_reconfigured() == {} and again.cfg.cls_epochs == 4
