"""The report in a real browser: headless Chromium renders it; every image loads, the console
stays free of errors, kept captions are green and dropped ones red, and a screenshot is saved.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no port is opened and no driver package
is needed. Chromium: Debian's `chromium` package (`apt-get install -y chromium`), or any Chromium
or Chrome binary named by CAPFILT_CHROMIUM. Without one the test fails under CI (CI set) and is
skipped elsewhere, with that message.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from capfilt.report import ReportSettings, write_report
from test_report import HOSTILE, boot  # noqa: F401 - `boot` is a fixture used below

INSTALL_HINT = ("headless Chromium not found: install Debian's chromium package (apt-get install -y chromium) "
                "or set CAPFILT_CHROMIUM to a Chromium or Chrome binary")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--hide-scrollbars", "--remote-debugging-pipe"]
TIMEOUT = 90.0  # seconds for any one answer; Chromium starts slowly on two busy cores


def find_chromium() -> str:
    named = os.environ.get("CAPFILT_CHROMIUM")
    candidates = [named] if named else [shutil.which(n) for n in
                                        ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    if os.environ.get("CI"):
        pytest.fail(INSTALL_HINT)
    pytest.skip(INSTALL_HINT)


class Browser:
    """A headless Chromium and its DevTools connection: commands, their answers, and events."""

    def __init__(self, executable: str, workdir: Path):
        to_chrome_r, self._write = os.pipe()
        self._read, from_chrome_w = os.pipe()

        def child_fds() -> None:  # Chromium reads commands on fd 3 and answers on fd 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = workdir / "chromium.log"
        with open(self.log, "wb") as log:  # a file, not a pipe: Chromium is chatty and a full pipe blocks it
            self.process = subprocess.Popen(
                [executable, *FLAGS, f"--user-data-dir={workdir / 'profile'}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(3, 4), preexec_fn=child_fds)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-1500:]
                raise AssertionError(f"no answer from Chromium (exit code {self.process.poll()}); its log ends:\n{tail}")
            if select.select([self._read], [], [], min(left, 1.0))[0]:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise AssertionError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._message(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


class Page:
    """One tab: open a URL, wait for its load event, evaluate, screenshot, and its console errors."""

    def __init__(self, browser: Browser, url: str, width: int = 1200, height: int = 900):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=self.session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, self.session)
        navigated = browser.send("Page.navigate", {"url": url}, self.session)
        assert "errorText" not in navigated, navigated
        browser.wait_for("Page.loadEventFired", self.session)

    def evaluate(self, expression: str) -> Any:
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        """Every error the page reported: console.error/assert, uncaught exceptions, and the
        browser's own log errors (failed loads, blocked resources, CSP violations)."""
        errors = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')} "
                              f"{params['entry'].get('url', '')}")
        return errors

    def screenshot(self, path: Path) -> Path:
        """The whole page, not only the window, as PNG."""
        size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        shot = self.browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, self.session)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture()
def browser(tmp_path):
    executable = find_chromium()
    b = Browser(executable, tmp_path)
    yield b
    b.close()


IMAGES = """[...document.images].map(i => ({alt: i.alt, complete: i.complete,
                                          width: i.naturalWidth, height: i.naturalHeight}))"""
CAPTION_COLOURS = """[...document.querySelectorAll('li.caption')].map(li => ({
    key: li.closest('figure').dataset.key, role: li.dataset.role, kept: li.dataset.kept,
    background: getComputedStyle(li).backgroundColor,
    text: (li.querySelector('.text') || li.querySelector('.missing')).textContent}))"""


def test_report_renders_in_chromium(boot, browser, tmp_path):  # noqa: F811 - the fixture imported above
    out, labels, rounds, rows = boot
    path = write_report(ReportSettings(dir=out, labels=labels, rounds=rounds, output=tmp_path / "report.html"))
    page = Page(browser, path.resolve().as_uri())

    images = page.evaluate(IMAGES)
    assert len(images) == 6 + 3  # six examples; histograms, threshold sweep, rounds
    broken = [i for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert page.console_errors() == []

    colours = page.evaluate(CAPTION_COLOURS)
    assert {(c["kept"], c["background"]) for c in colours} == {("true", "rgb(218, 251, 225)"),
                                                               ("false", "rgb(255, 235, 233)")}
    assert len(colours) == sum(1 + len(rows[k]["synthetic_captions"]) for k in rows if rows[k]["status"] == "ok")
    # the hostile caption is text on the page, and nothing ran
    assert [c["text"] for c in colours if c["key"] == "w001" and c["role"] == "web"] == [HOSTILE]
    assert page.evaluate("document.scripts.length") == 0

    shot = page.screenshot(tmp_path / "report.png")
    print(f"screenshot: {shot}")
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.width == 1200 and img.height > 900  # the whole page, taller than the window


def test_harness_sees_broken_pages(browser, tmp_path):
    """The checks above could pass by seeing nothing: a page with a missing image, a console error
    and an uncaught exception must show all three."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img alt="missing" src="missing.png">'
                   '<script>console.error("boom"); undefined_function();</script></body></html>')
    page = Page(browser, bad.as_uri())
    (image,) = page.evaluate(IMAGES)
    assert image["width"] == 0
    errors = page.console_errors()
    assert any("boom" in e for e in errors), errors
    assert any(e.startswith("exception:") and "undefined_function" in e for e in errors), errors
    assert any(e.startswith("log (network)") and "missing.png" in e for e in errors), errors
