"""The threshold explorer in a real browser: Debian's Chromium driven by Playwright.

The Voila app (`make explore`) on a smoke run: it loads without console errors, a key press on
the `att` slider changes the overlay image and the coverage figure and the opposite key press
restores both, the image picker changes the images, a screenshot is saved. Then notebook 03 in
JupyterLab: Run All gives no error output and a live slider. Servers run on free ports and are
stopped by their process id, also when a test fails. Without Chromium or Playwright the tests
are skipped with the reason; with CI set they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from nsrom_lib.app import free_port, voila_command, voila_env
from nsrom_lib.browser import (
    CHROMIUM,
    IMAGE_HASH,
    chromium,
    open_app,
    server,
    slider,
    time_explorer,
    unavailable,
)
from nsrom_lib.browser import wait_for as _wait_for
from nsrom_lib.browser import watch_console as _watch_console

ROOT = Path(__file__).resolve().parents[1]
#: Set to a file path to store a small copy of the app's screenshot there (the README's).
SCREENSHOT_ENV = "NSROM_SCREENSHOT"

pytestmark = pytest.mark.slow


def _unavailable() -> str | None:
    return unavailable(CHROMIUM)


@pytest.fixture(scope="module")
def browser():
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "") not in ("", "0", "false"):
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    with chromium() as b:
        yield b


N_APP = 100


@pytest.fixture(scope="module")
def voila(smoke_run, tmp_path_factory):
    if _unavailable() and os.environ.get("CI", "") in ("", "0", "false"):
        pytest.skip(f"browser tests skipped: {_unavailable()}")
    port = free_port()
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    url = f"http://127.0.0.1:{port}/"
    with server(voila_command(port), voila_env(smoke_run, N_APP), url, log):
        yield url


def test_voila_app_reacts_to_slider_and_picker(browser, voila, smoke_run, tmp_path):
    from nsrom_lib.app import reopen_run
    from nsrom_lib.pipeline import load_explorer_inputs
    from nsrom_lib.widgets import PICKS, pick_images

    app = open_app(browser, voila, timeout_ms=120_000)
    page, errors, image, coverage, load_s = (app[k] for k in ("page", "errors", "image",
                                                              "coverage", "load_s"))

    def state():
        return image.evaluate(IMAGE_HASH), coverage.inner_text()

    start = state()
    att = slider(page, "att")
    att.focus()
    att.press("ArrowLeft")  # att - 0.05: more background pixels ignored
    # the overlay image and the coverage figure both change (they may arrive one by one)
    moved, dt_down = _wait_for(state, lambda s: s[0] != start[0] and s[1] != start[1])
    att.press("ArrowRight")
    back, dt_up = _wait_for(state, lambda s: s == start)

    # the picker: the fewest images shown (from 4 on) at which a kind of image differs
    x = load_explorer_inputs(reopen_run(smoke_run), limit=N_APP)
    n, label = next((n, t) for n in range(4, 9) for t, v in PICKS.items()
                    if pick_images(x, v, n) not in ([], pick_images(x, "first", n)))
    shown = slider(page, "shown")
    shown.focus()
    for _ in range(n - 4):
        shown.press("ArrowRight")
    if n > 4:
        start, _ = _wait_for(state, lambda s: s[0] != start[0])
    page.locator(".widget-dropdown", has=page.locator("label", has_text="images")) \
        .locator("select").select_option(label=label)
    picked, dt_pick = _wait_for(state, lambda s: s[0] != start[0])
    assert picked[1] == start[1], "other images, the same table"

    shot = tmp_path / "explore.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        from PIL import Image

        im = Image.open(shot).convert("RGB")
        im.thumbnail((1000, 1000))
        im.quantize(256).save(os.environ[SCREENSHOT_ENV], optimize=True)
    assert not errors, errors
    timed = time_explorer(browser, voila, repeats=2)  # `python -m nsrom_lib.browser`'s timing
    assert len(timed["seconds"]) == 2 and all(t > 0 for t in timed["seconds"])
    assert not timed["errors"], timed["errors"]
    print(f"\nvoila: page loaded in {load_s:.2f} s; att slider update {dt_down:.2f} s / "
          f"{dt_up:.2f} s, image picker {dt_pick:.2f} s ({len(x['sal'])} images); "
          f"screenshot {shot}")
    page.close()


def _lab_copy(folder: Path, run_dir: Path) -> Path:
    """Notebook 03 with the smoke run as its parameters (Lab autosaves: a copy)."""
    nb = json.loads((ROOT / "notebooks" / "03_background_extraction.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    cell["source"] = "".join(cell["source"]) + (
        f'\nprofile = "smoke"\nrun_dir = {str(run_dir)!r}\nn_explore = 24\n')
    out = folder / "03.ipynb"
    out.write_text(json.dumps(nb))
    return out


def test_notebook_03_runs_live_in_jupyterlab(browser, smoke_run, tmp_path):
    from nsrom_lib.progress import HEADLESS_ENV

    _lab_copy(tmp_path, smoke_run)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = free_port(), "nsrom-test"
    env = {k: v for k, v in os.environ.items() if k != HEADLESS_ENV}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1",
           "--port", str(port), "--allow-root", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0"]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, env, f"{base}/api/status?token={token}", tmp_path / "lab.log"):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = _watch_console(page)
        page.goto(f"{base}/lab/tree/03.ipynb?token={token}", timeout=120_000)
        page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
        page.locator("#jp-main-statusbar", has_text="Idle").first.wait_for(timeout=120_000)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
        n_code = page.locator(".jp-CodeCell").count()
        done = """(n) => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
            .filter(p => /\\[\\d+\\]/.test(p.textContent)).length >= n"""
        page.wait_for_function(done, arg=n_code, timeout=300_000)
        failed = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
        assert failed.count() == 0, failed.first.inner_text()[:2000]
        sliders = page.locator(".jp-OutputArea .widget-slider")
        assert sliders.count() >= 5, "the explorer is live (sliders), not a static copy"
        out = page.locator(".jp-OutputArea-output", has=page.locator(".widget-slider")).first
        image = out.locator(".widget-image").first
        before = image.evaluate(IMAGE_HASH)
        att = out.locator(".widget-slider",
                          has=page.locator("label", has_text=re.compile("^att$"))) \
            .locator(".noUi-handle").first
        att.focus()
        att.press("ArrowLeft")
        _, dt = _wait_for(lambda: image.evaluate(IMAGE_HASH), lambda h: h != before)
        print(f"\njupyterlab: notebook 03 ran ({n_code} code cells); slider update {dt:.2f} s")
        bad = [e for e in errors if "favicon" not in e]
        assert not bad, bad
        page.close()


def test_without_a_browser_the_reason_is_given(monkeypatch, tmp_path):
    import test_browser as me

    monkeypatch.setattr(me, "CHROMIUM", tmp_path / "no-chromium")
    assert "apt-get install -y chromium" in me._unavailable()


def test_the_timing_command_says_why_it_cannot_run(monkeypatch, capsys, tmp_path):
    import nsrom_lib.browser as b

    monkeypatch.setattr(b, "CHROMIUM", tmp_path / "no-chromium")
    assert b.main(["--run", str(tmp_path)]) == 2
    assert "apt-get install -y chromium" in capsys.readouterr().err
