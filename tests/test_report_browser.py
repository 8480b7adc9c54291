"""Acceptance: report.html of a real load run and of a sim run, opened in headless Chromium as a user
would open the file: it renders with no network request and no console error, and every plot is a
decoded image that is not blank.

The browser is Debian's `chromium` (`make test` installs it when missing and running as root), driven
over the Chrome DevTools Protocol on --remote-debugging-pipe: NUL-terminated JSON on fds 3 and 4, no
port, no websocket library, no browser download. Without chromium these tests fail (they never skip):
CI must not pass by not looking.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SMOKE = Path("scenarios/smoke.yaml")
#: Flags that keep Chromium quiet on a closed network: no background fetches, updates or sync.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe")


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.fail("chromium is not installed: `make test` installs it when run as root "
                    "(apt-get install -y chromium); the report's browser acceptance cannot run without it")
    return found


def _onto_3_and_4(read_end: int, write_end: int) -> None:
    """In the child: the pipe ends onto fds 3 and 4, through fresh copies (either end may already be 3 or 4)."""
    a, b = os.dup(read_end), os.dup(write_end)
    os.dup2(a, 3)
    os.dup2(b, 4)


class Browser:
    """One headless Chromium and a CDP session per page, over the debugging pipe."""

    def __init__(self, user_data_dir: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4
        self.process = subprocess.Popen(
            [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: _onto_3_and_4(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """One command; events that arrive before its answer are kept in self.events."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise AssertionError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise AssertionError(f"chromium closed its pipe (exit {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return Page(self, session, target)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except AssertionError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)


class Page:
    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target

    def evaluate(self, expression: str) -> Any:
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                         "awaitPromise": True}, session=self.session)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def requests(self) -> list[str]:
        """Every URL the page asked for (data: URIs and the file itself included)."""
        return [e["params"]["request"]["url"] for e in self.browser.events
                if e.get("sessionId") == self.session and e.get("method") == "Network.requestWillBeSent"]

    def console_errors(self) -> list[str]:
        out = []
        for e in self.browser.events:
            if e.get("sessionId") != self.session:
                continue
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(f"{params['entry'].get('source')}: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})


#: Per image: decoded size, and the spread of its pixels' grey levels drawn on a canvas (0 = one colour).
IMAGES_JS = """
(async () => Promise.all([...document.images].map(async img => {
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < d.length; i += 16) { const v = (d[i] + d[i+1] + d[i+2]) / 3; n++; sum += v; sq += v * v; }
  const mean = sum / n;
  return {alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, complete: img.complete,
          variance: sq / n - mean * mean};
})))()
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()
    assert b.process.poll() is not None, "chromium was left running"


def _run_dir(output: str) -> Path:
    match = re.search(r"report: (\S+)report\.html", output.replace("\n", ""))
    assert match, output
    return Path(match.group(1))


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4 s live load run of the smoke scenario and a 20 s sim of it, started side by side as a user would."""
    out = tmp_path_factory.mktemp("results")
    commands = {"load": ["load", str(SMOKE), "--duration", "4", "--users", "4"],
                "sim": ["sim", str(SMOKE), "--duration", "20"]}
    procs = {mode: subprocess.Popen([sys.executable, "-m", "x402bench", *args, "--out", str(out / mode)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for mode, args in commands.items()}
    dirs = {}
    for mode, proc in procs.items():
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode in (0, 1), output  # 1: an SLO of the short run may fail; the report is still written
        dirs[mode] = _run_dir(output)
    return dirs


@pytest.mark.parametrize("mode", ["load", "sim"])
def test_report_renders_offline_without_errors_and_no_plot_is_blank(mode: str, run_dirs: dict[str, Path],
                                                                    browser: Browser) -> None:
    report = run_dirs[mode] / "report.html"
    page = browser.open(report.resolve().as_uri())
    try:
        images = page.evaluate(IMAGES_JS)
        title = page.evaluate("document.title")
        text = page.evaluate("document.body.innerText")
        time.sleep(0.2)  # a late console message or request still lands in the events
        browser.send("Runtime.evaluate", {"expression": "1"}, session=page.session)
        requests = page.requests()
        errors = page.console_errors()
    finally:
        page.close()
    outside = [u for u in requests if not u.startswith(("data:", "file:"))]
    assert not outside, f"the report asked the network for {outside}"
    assert not errors, errors
    assert "smoke" in title and f"({mode} run)" in text
    for heading in ("Key metrics", "Steadiness", "Routes", "Plots"):
        assert heading in text, heading
    pngs = sorted(p.name for p in run_dirs[mode].glob("*.png"))
    assert len(images) == len(pngs) >= 4, (images, pngs)
    for img in images:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
        assert img["variance"] > 50, f"plot {img['alt']!r} looks blank: {img}"


def test_the_check_sees_a_network_request_a_console_error_and_a_blank_image(tmp_path: Path,
                                                                          browser: Browser) -> None:
    """The acceptance above can fail: the same probes on a page that breaks each rule."""
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2), dpi=100)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # an empty white figure
    blank = base64.b64encode(buffer.getvalue()).decode()
    bad = tmp_path / "bad.html"
    bad.write_text(f'<html><body><img alt="blank" src="data:image/png;base64,{blank}">'
                   '<img alt="remote" src="http&#58;//127.0.0.1:9/x.png" onerror="this.remove()">'
                   "<script>console.error('boom')</script></body></html>")
    page = browser.open(bad.resolve().as_uri())
    try:
        images = page.evaluate(IMAGES_JS)
        browser.send("Runtime.evaluate", {"expression": "1"}, session=page.session)
        requests = page.requests()
        errors = page.console_errors()
    finally:
        page.close()
    assert [u for u in requests if u.startswith("http:")] == ["http://127.0.0.1:9/x.png"]
    assert any("boom" in e for e in errors), errors
    assert [img["variance"] for img in images] == [0]
