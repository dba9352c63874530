"""The threshold explorer in a real browser: Debian's Chromium driven by Playwright.

What the browser tests and the timing below share: a server started and stopped by its
process group, the page's console errors, slider handles by their label, the bytes of an
image as the browser shows them, and waiting for a change.

`python -m nsrom_lib.browser [--run D] [--n 100] [--repeats 10]` serves the app of run D
(`make explore`'s choice when unset) and times what a reader waits for: from a key press on
the `att` slider until the overlay image and the coverage figure have both changed, over
`repeats` presses alternating left and right. It needs Chromium at /usr/bin/chromium and
Playwright (`pip install -e '.[dev]'`; never `playwright install`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nsrom_lib.app import choose_run, free_port, voila_command, voila_env

__all__ = ["CHROMIUM", "ARGS", "IMAGE_HASH", "unavailable", "chromium", "server",
           "watch_console", "wait_for", "slider", "open_app", "time_explorer", "main"]

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, offline, and no sandbox (containers often run as root).
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

#: A page script: the SHA-256 of an <img>'s bytes (its data URL fetched), in hex.
IMAGE_HASH = """async (el) => {
  const b = await (await fetch(el.src)).arrayBuffer();
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', b));
  return Array.from(h).map(x => x.toString(16).padStart(2, '0')).join('');
}"""


def unavailable(browser: Path | None = None) -> str | None:
    """Why the browser cannot run here (None when it can)."""
    browser = CHROMIUM if browser is None else browser
    if not browser.is_file():
        return f"no browser at {browser} (apt-get install -y chromium; make test installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's Browser), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], url: str, log: Path,
           timeout: float = 120) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group with its output in `log`, wait until `url`
    answers, yield it; stop the group (the server and its kernels) on exit, also on an error.
    RuntimeError when it exits early or does not answer within `timeout` s."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=log.parent)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"server not up after {timeout} s:\n"
                                       f"{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def watch_console(page: Any) -> list[str]:
    """The page's console errors and uncaught exceptions, as they come. A resource from another
    host (a web font, a CDN script) that cannot be reached offline is not the app's error."""
    errors: list[str] = []

    def on_console(m: Any) -> None:
        url = (m.location or {}).get("url", "")
        if m.type == "error" and not (m.text.startswith("Failed to load resource")
                                      and not url.startswith("http://127.0.0.1")):
            errors.append(f"{m.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def wait_for(fn: Callable[[], Any], done: Callable[[Any], bool],
             timeout: float = 30) -> tuple[Any, float]:
    """Poll fn() every 20 ms until done(value); (value, seconds). TimeoutError after `timeout`."""
    t0 = time.perf_counter()
    while True:
        new = fn()
        if done(new):
            return new, time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"not reached after {timeout} s (last {new!r})")
        time.sleep(0.02)


def slider(page: Any, name: str) -> Any:
    """The handle of the ipywidgets slider labelled `name` (focus it, then press arrow keys)."""
    label = page.locator("label", has_text=re.compile(rf"^{re.escape(name)}$"))
    return page.locator(".widget-slider", has=label).locator(".noUi-handle").first


def open_app(browser: Any, url: str, timeout_ms: int = 300_000) -> dict[str, Any]:
    """A new page on the explorer app at `url`, once its first image and quality table show:
    page, errors (`watch_console`), image (the first overlay), coverage (the BE labels'
    coverage cell) and load_s (seconds until both showed)."""
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors = watch_console(page)
    t0 = time.perf_counter()
    page.goto(url, timeout=timeout_ms)
    image = page.locator(".widget-image").first
    image.wait_for(timeout=timeout_ms)
    coverage = page.locator('tr[data-stage="initial"] td[data-col="coverage"]').first
    coverage.wait_for(timeout=timeout_ms)
    return dict(page=page, errors=errors, image=image, coverage=coverage,
                load_s=time.perf_counter() - t0)


def time_explorer(browser: Any, url: str, repeats: int = 10) -> dict[str, Any]:
    """Load the app at `url` and time `repeats` presses on the `att` slider (left, right, ...):
    seconds from the press until the overlay image and the quality table both changed.

    The table, not only its coverage figure: on a hundred images one step of `att` may leave
    the coverage the same to three decimals, while the table's "updated in" line always
    changes. The app writes the table first and the image last, so both changed = redrawn."""
    app = open_app(browser, url)
    page, errors, image, load_s = (app[k] for k in ("page", "errors", "image", "load_s"))
    table = page.locator("table.nsrom-quality").first.locator("xpath=..")  # with "updated in"

    def state() -> tuple[str, str]:
        return image.evaluate(IMAGE_HASH), table.inner_text()

    att = slider(page, "att")
    att.focus()
    seconds = []
    for i in range(repeats):
        before = state()
        att.press("ArrowLeft" if i % 2 == 0 else "ArrowRight")
        _, dt = wait_for(state, lambda s, b=before: s[0] != b[0] and s[1] != b[1], timeout=60)
        seconds.append(dt)
    page.close()
    return dict(load_s=load_s, seconds=seconds, errors=errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nsrom_lib.browser",
                                description="time the explorer app in Chromium")
    p.add_argument("--run", default=None, help="run folder (default: make explore's choice)")
    p.add_argument("--n", type=int, default=100, help="training images of the quality table")
    p.add_argument("--repeats", type=int, default=10, help="slider presses to time")
    args = p.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"nsrom browser: {reason}", file=sys.stderr)
        return 2
    try:
        run_dir = choose_run(args.run, build=False)
    except FileNotFoundError as e:
        print(f"nsrom browser: {e}", file=sys.stderr)
        return 2
    import tempfile

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, chromium() as b, \
            server(voila_command(port), voila_env(run_dir, args.n),
                   f"http://127.0.0.1:{port}/", Path(tmp) / "voila.log"):
        r = time_explorer(b, f"http://127.0.0.1:{port}/", args.repeats)
    s = r["seconds"]
    from nsrom_lib.device import cpu_model  # imports torch: only once the browser can run

    print(f"explorer of {run_dir}, {args.n} images, {cpu_model()}, {os.cpu_count()} cores")
    print(f"page load (kernel start, first render): {r['load_s']:.2f} s")
    print(f"att slider, press -> image and quality table updated, {len(s)} presses: "
          f"median {statistics.median(s):.3f} s, min {min(s):.3f} s, max {max(s):.3f} s")
    if r["errors"]:
        print(f"console errors: {r['errors']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
