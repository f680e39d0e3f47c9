"""``ouroboros3d app`` in a real browser: headless Chromium (Debian's package, driven by
Playwright; no browser is downloaded) against the command itself, started on a free loopback
port.

The first test uploads the shipped example, runs the shipped ``tiny`` recipe with non-default
steps and seed, and checks what a visitor sees (the views image, a video Chromium decodes, the
3D viewer's canvas, the step preview) and what they download: every file byte-identical to
``ouroboros3d generate`` with the same recipe, seed and steps (``manifest.json`` equal except
timings, peak memory and the input's path). The page also fetches nothing from outside the
server. The second test uploads a file that is not an image and reads, in the page, the line
``generate`` prints for it.

``OUROBOROS3D_WRITE_SCREENSHOT=1`` also writes the finished page to ``docs/app.png`` (the
README's screenshot); every run saves it under the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = ROOT / "examples" / "toy-object.png"
#: the venv's console script: the command a user runs
OUROBOROS3D = str(Path(sys.executable).with_name("ouroboros3d"))
#: the tiny recipe's defaults are 4 steps and seed 0; other values show the page's options arrive
STEPS, SEED = 5, 7
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    """One thread (the reference run must reduce in the same order) and gradio's files in
    the test's folder."""
    return dict(os.environ, OMP_NUM_THREADS="1", GRADIO_TEMP_DIR=str(tmp / "gradio"))


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> Iterator[str]:
    """``ouroboros3d app`` on a free loopback port; stopped with Ctrl-C afterwards."""
    tmp = tmp_path_factory.mktemp("app")
    port = _free_port()
    log = (tmp / "app.log").open("w")
    process = subprocess.Popen(
        [OUROBOROS3D, "app", "--port", str(port)],
        cwd=tmp,
        env=_env(tmp),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        # a child inherits an ignored SIGINT, and Python then leaves Ctrl-C ignored: when the
        # test process runs with SIGINT ignored (a background job, as `.ci/run` may be), the
        # app would never see the Ctrl-C this fixture sends (CI hung here twice)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the app did not start: {(tmp / 'app.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    log.close()
    assert code == 130, (tmp / "app.log").read_text()[-2000:]  # Ctrl-C: closed, like every command


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile (a browser context; ``new_page()`` opens a tab)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    return browser.new_page()


def _upload_and_set(page, url: str, image: Path | None, steps: int, seed: int) -> None:
    """Open the page, upload ``image`` (``None``: click the shipped example), set steps and seed."""
    page.goto(url)
    if image is None:
        page.get_by_text(EXAMPLE.name, exact=True).click()
    else:
        page.set_input_files("#input-image input[type=file]", str(image))
    page.wait_for_function("() => document.querySelector('#input-seen img')?.naturalWidth > 0", timeout=60_000)
    page.fill("#steps input[type=number]", str(steps))
    page.press("#steps input[type=number]", "Enter")
    page.fill("#seed input", str(seed))
    page.press("#seed input", "Tab")


def _download(page, name: str, folder: Path, tries: int = 3) -> Path:
    """Click the download link of ``name`` as a visitor does; returns the saved file.

    Now and then a click starts no download (once in CI and twice in 14 local runs, each time
    a link in the middle of the list, which scrolls: 14 files in 320 px; the cause is not
    pinned down). A visitor clicks again, and so does this helper, up to ``tries`` times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    link = page.locator(f"#downloads a[download='{name}']")
    for attempt in range(1, tries + 1):
        link.scroll_into_view_if_needed()
        try:
            with page.expect_download(timeout=15_000) as download:
                link.click()
            break
        except PlaywrightTimeout:
            if attempt == tries:
                raise AssertionError(f"{tries} clicks on the download link of {name} started no download") from None
    target = folder / download.value.suggested_filename
    download.value.save_as(target)
    return target


def _without_run_details(manifest: dict) -> dict:
    """What two runs of the same generation share: no timings, memory or input path."""
    manifest = dict(manifest, input=dict(manifest["input"]))
    for key in ("timings_s", "peak_memory"):
        manifest.pop(key)
    manifest["input"].pop("source")
    return manifest


def test_upload_generate_view_and_download_the_files_generate_writes(app_url, page, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(
        [OUROBOROS3D, "generate", str(EXAMPLE), "--recipe", "tiny", "--steps", str(STEPS), "--seed", str(SEED), "-o", str(reference), "-q"],
        env=_env(tmp_path), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    expected = {p.name: p for p in (reference / EXAMPLE.stem).rglob("*") if p.is_file()}

    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((app_url, "blob:", "data:")) else outside.append(r.url))
    _upload_and_set(page, app_url, EXAMPLE, STEPS, SEED)
    page.click("#generate")

    links = page.locator("#downloads a[download]")
    links.nth(len(expected) - 1).wait_for(timeout=240_000)
    assert links.count() == len(expected)
    assert "Done in" in page.inner_text("#status")
    # what a visitor sees: the views grid, a video Chromium decodes, the 3D viewer, the last preview
    grid_width = page.evaluate("() => document.querySelector('#views img').naturalWidth")
    from PIL import Image

    assert grid_width == Image.open(expected["views.png"]).width
    page.wait_for_function("() => document.querySelector('#turntable video')?.readyState >= 2", timeout=30_000)
    assert page.evaluate("() => document.querySelector('#turntable video').videoWidth") > 0
    # the viewer builds its canvas after the model file has loaded: wait for it (CI once looked too early)
    page.wait_for_function("() => { const c = document.querySelector('#viewer canvas'); return c && c.width > 0 && c.height > 0 }", timeout=60_000)
    assert page.evaluate("() => document.querySelector('#preview img')?.naturalWidth") > 0
    page.wait_for_timeout(1000)  # let the viewer draw before the screenshot
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("OUROBOROS3D_WRITE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "app.png")

    # what a visitor downloads: the files generate wrote, byte for byte
    downloaded = tmp_path / "downloads"
    for name in links.evaluate_all("links => links.map(a => a.download)"):
        _download(page, name, downloaded)
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(expected)
    for name, path in expected.items():
        if name == "manifest.json":
            got = json.loads((downloaded / name).read_text())
            assert _without_run_details(got) == _without_run_details(json.loads(path.read_text()))
            assert got["seed"] == SEED
        else:
            assert (downloaded / name).read_bytes() == path.read_bytes(), f"{name} differs from generate's"
    assert outside == [], f"the page fetched from outside the server: {outside}"


def test_a_file_that_is_not_an_image_shows_the_cli_error_in_the_page(app_url, page, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    cli = subprocess.run(
        [OUROBOROS3D, "generate", bad.name, "--recipe", "tiny"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 2
    line = cli.stderr.strip().splitlines()[-1]
    assert line.startswith("error: bad.png: ")
    message = line.removeprefix("error: ")

    page.goto(app_url)
    page.set_input_files("#input-image input[type=file]", str(bad))
    errors = page.locator("[data-testid=toast-text]")
    errors.first.wait_for(timeout=60_000)  # at once, from the upload's check
    page.click("#generate")
    errors.nth(1).wait_for(timeout=60_000)  # and again from Generate, before any model loads
    assert errors.all_inner_texts() == [message, message]
    assert page.locator("#downloads a[download]").count() == 0


def test_two_visitors_at_once_queue_and_each_gets_their_own_result(app_url, browser, tmp_path):
    tabs = {seed: browser.new_page() for seed in (1, 2)}
    _upload_and_set(tabs[1], app_url, None, 2, 1)  # the example button
    _upload_and_set(tabs[2], app_url, EXAMPLE, 2, 2)
    for tab in tabs.values():  # both ask before either is done
        tab.click("#generate")
    # the second is told its place in the queue (gradio's "queue: 1/1"), then runs
    tabs[2].wait_for_function("() => /queue: \\d+\\/\\d+/.test(document.body.innerText)", timeout=30_000)
    for seed, tab in tabs.items():
        tab.locator("#downloads a[download='manifest.json']").wait_for(timeout=240_000)
        manifest = json.loads(_download(tab, "manifest.json", tmp_path / str(seed)).read_text())
        assert manifest["seed"] == seed and manifest["timings_s"]["sampler.total"] > 0
        assert "Done in" in tab.inner_text("#status")
    grids = [_download(tab, "views.png", tmp_path / str(seed)).read_bytes() for seed, tab in tabs.items()]
    assert grids[0] != grids[1]
    for tab in tabs.values():
        tab.close()
