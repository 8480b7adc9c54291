"""`x402bench load --web`, as a user runs it: the installed command in a terminal of its own (a pty, so the
progress line is drawn as it would be), the smoke world on 127.0.0.1, Locust's web UI on a free port.

The UI answers during the run and after it; its statistics hold one entry per payment (as many as the run
folder's requests.csv has rows), the HTTP round trips and the settlement latency in the "x402" tab instead;
its address is the last thing printed, after the results; Ctrl-C (SIGINT) ends it with the SLO exit code, and
no Locust process is left behind."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class Terminal:
    """A child process on a pty, its output collected as plain text (escape codes removed)."""

    def __init__(self, args: list[str]) -> None:
        leader, follower = pty.openpty()
        # Ctrl-C as a terminal's foreground job gets it: SIGINT at its default even when this test runs under a
        # background job of a non-interactive shell (as CI may), which leaves SIGINT ignored in every child
        self.process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT,
                                        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"}, close_fds=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(follower)
        self._fd, self._chunks = leader, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def text(self) -> str:
        return ANSI.sub("", b"".join(self._chunks).decode(errors="replace")).replace("\r", "\n")

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.text[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{self.text[-3000:]}")


def locust_processes(marker: str) -> list[int]:
    """PIDs of live Locust processes whose environment names this test's run folder."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"locust" in (entry / "cmdline").read_bytes() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_web_ui_lives_until_ctrl_c_and_counts_each_payment_once(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    term = Terminal([sys.executable, "-m", "x402bench", "load", "scenarios/smoke.yaml", "--web", "--duration", "4",
                     "--users", "2", "--out", str(out)])
    try:
        url = term.wait_for(r"Locust web UI at (http://127\.0\.0\.1:\d+)", 60).group(1)
        seen: list[str] = []
        during: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                during = httpx.get(url + "/stats/requests", timeout=5).json()
            except (httpx.HTTPError, ValueError) as exc:
                seen.append(type(exc).__name__)
                time.sleep(0.3)
                continue
            seen.append(during.get("state", "?"))
            if during.get("state") == "running" and any(s["name"] != "Aggregated" for s in during["stats"]):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the UI never showed a running test with paid requests: {seen}")
        assert httpx.get(url + "/", timeout=5).status_code == 200

        term.wait_for(r"report: \S+report\.html", 120)
        last = term.wait_for(r"Locust web UI at (http://127\.0\.0\.1:\d+)[^\n]*Ctrl-C[^\n]*\n?\s*$", 30)
        assert last.group(1) == url
        tail = term.text[term.text.rindex("report: "):]
        assert "paid req/s" not in tail.split("Locust web UI at")[-1]  # nothing drawn over or after the address

        (run_dir,) = out.glob("smoke/*/")
        with (run_dir / "requests.csv").open() as f:
            payments = sum(1 for _ in csv.DictReader(f))
        after = httpx.get(url + "/stats/requests", timeout=5).json()
        assert after["state"] == "stopped"
        rows = {(s["method"], s["name"]): s["num_requests"] for s in after["stats"] if s["name"] != "Aggregated"}
        assert rows and all(method == "PAY" for method, _ in rows), rows
        assert sum(rows.values()) == payments > 0
        assert after["stats"][-1]["name"] == "Aggregated" and after["stats"][-1]["num_requests"] == payments
        # the round trips and the settlement latency: in the x402 tab, not in the request statistics
        (tab,) = [t["data"] for t in after["extended_stats"] if t["key"] == "x402"]
        trips = {r["name"]: r for r in tab}
        paid_sends = sum(r["count"] for name, r in trips.items() if name.endswith("[paid]"))
        assert paid_sends >= payments
        summary = json.loads((run_dir / "summary.json").read_text())
        settled = trips["settlement: accepted to block (facilitator ledger)"]
        assert settled["count"] == summary["reconciliation"]["settled"] > 0
        assert 0 < settled["p95_ms"] < 5000
        assert httpx.get(url + "/x402/round-trips", timeout=5).json() == tab

        term.process.send_signal(signal.SIGINT)
        assert term.process.wait(timeout=30) in (0, 1)
        deadline = time.monotonic() + 10
        while locust_processes(str(out)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not locust_processes(str(out))
        try:
            httpx.get(url + "/", timeout=2)
            raise AssertionError("the UI still answers after Ctrl-C")
        except httpx.HTTPError:
            pass
    finally:
        if term.process.poll() is None:
            term.process.kill()
            term.process.wait()
        for pid in locust_processes(str(out)):
            os.kill(pid, signal.SIGKILL)
