"""The comparison of `x402bench compare` as one self-contained HTML page (no script, no network): the runs,
the metrics with their ratios to the baseline, and the gates with their verdicts, for a CI artifact."""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Sequence

from x402bench.results.compare import Breach, Comparison, Gate, dig, gate_ratio, metric_key
from x402bench.results.report import esc, fmt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f8fa}
td.key,td.txt,th.txt{text-align:left}td.key{font-family:ui-monospace,monospace;font-size:.85rem;color:#57606a;text-align:left}
.bad{background:#ffebe9;color:#a40e26;font-weight:600}.good{color:#1a7f37}.na{color:#8c959f}
.verdict{font-size:1.05rem;padding:.5rem .8rem;display:inline-block;border-radius:4px}
.verdict.bad{border:1px solid #a40e26}.verdict.good{background:#dafbe1;border:1px solid #1a7f37}
"""


def letter(i: int) -> str:
    """A, B, C, ... for the runs (the baseline is A), then #27, #28, ..."""
    return chr(ord("A") + i) if i < 26 else f"#{i + 1}"


def default_html_path(run_dirs: Sequence[Path]) -> Path:
    """Next to the baseline run (its scenario's results folder), named from every run compared, so the same
    comparison made again overwrites its page rather than adding one."""
    key = hashlib.sha256("\n".join(str(Path(d).resolve()) for d in run_dirs).encode()).hexdigest()[:10]
    first = Path(run_dirs[0]).resolve()
    return first.parent / f"compare-{first.name}-{key}.html"


def _ratio_cell(value: float | None, breached: bool) -> str:
    if value is None:
        return '<td class="na">n/a</td>'
    text = "inf" if math.isinf(value) else f"{value:.3f}x"
    return f'<td class="bad">{esc(text)}</td>' if breached else f"<td>{esc(text)}</td>"


def render_compare(comparison: Comparison, gates: Sequence[Gate], breaches: Sequence[Breach],
                   where: Path | None = None) -> str:
    """The whole page; `where` is the file it goes to, so each run's report is linked relative to it (the
    page and the results folder can move together)."""
    crossed = {(b.gate.path, b.run) for b in breaches}
    gated = {g.path for g in gates}
    head = ['<th>metric</th><th class="txt">name</th>']
    for i, label in enumerate(comparison.labels):
        head.append(f"<th>{letter(i)}: {esc(label)}</th>")
        if i:
            head.append(f"<th>{letter(i)}/A</th>")
    rows = []
    for row in comparison.rows:
        key = metric_key(row.path)
        cells = [f"<td>{esc(row.metric)}{' (gated)' if row.path in gated else ''}</td><td class='key'>{esc(key)}</td>"]
        for i, value in enumerate(row.values):
            cells.append(f"<td>{esc(fmt(value))}</td>")
            if i:
                cells.append(_ratio_cell(row.ratios[i - 1], (row.path, i) in crossed))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    runs = []
    for i, (label, run_dir, summary) in enumerate(zip(comparison.labels, comparison.run_dirs, comparison.summaries)):
        report = Path(run_dir).resolve() / "report.html"
        href = os.path.relpath(report, Path(where).resolve().parent) if where else report.as_uri()
        link = f'<a href="{esc(Path(href).as_posix())}">report</a>' if report.is_file() else "no report.html"
        runs.append(f"<tr><td>{letter(i)}{' (baseline)' if i == 0 else ''}</td><td class='txt'>{esc(label)}</td>"
                    f"<td class='txt'>{esc(summary.get('mode'))}</td><td class='key'>{esc(Path(run_dir).resolve())}</td>"
                    f"<td>{link}</td></tr>")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>x402bench compare: {esc(comparison.labels[0])} and {len(comparison.labels) - 1} more</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>x402bench compare</h1>",
        f"<p>{len(comparison.labels)} runs, ratios against the baseline A; written "
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}.</p>",
    ]
    if gates:
        verdict = (f'<p class="verdict bad">{len(breaches)} gate failure(s): exit 1</p>' if breaches
                   else '<p class="verdict good">every gate passed</p>')
        parts += ["<h2>Gates</h2>", verdict, "<table><thead><tr><th>gate</th><th>run</th><th>ratio</th>"
                  "<th class='txt'>verdict</th></tr></thead><tbody>"]
        for gate in gates:
            for i in range(1, len(comparison.labels)):
                breach = next((b for b in breaches if b.gate == gate and b.run == i), None)
                shown = gate_ratio(dig(comparison.summaries[0], gate.path), dig(comparison.summaries[i], gate.path))
                ratio = "n/a" if shown is None else ("inf" if math.isinf(shown) else f"{shown:.3f}x")
                mark = f'<td class="bad txt">{esc(breach.message)}</td>' if breach else '<td class="good txt">pass</td>'
                parts.append(f"<tr><td class='key'>{esc(gate.text)}</td><td>{letter(i)}</td><td>{esc(ratio)}</td>"
                             f"{mark}</tr>")
        parts.append("</tbody></table>")
    parts += ["<h2>Runs</h2><table><thead><tr><th>run</th><th class='txt'>label</th><th class='txt'>mode</th>"
              "<th class='txt'>folder</th><th></th>"
              "</tr></thead><tbody>", *runs, "</tbody></table>",
              "<h2>Metrics</h2><table><thead><tr>", *head, "</tr></thead><tbody>", *rows, "</tbody></table>",
              "</body></html>"]
    return "\n".join(parts) + "\n"


def write_compare_html(path: Path, comparison: Comparison, gates: Sequence[Gate], breaches: Sequence[Breach]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_compare(comparison, gates, breaches, path), encoding="utf-8")
    return path
