"""A run's SLO checks as JUnit XML, the report format CI systems (GitLab, Jenkins, GitHub test reporters)
already show: one testcase per check, a failed check a <failure> saying what was measured against which bound.

Written with xml.etree.ElementTree, which escapes every attribute and text itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _figure(value: Any) -> str:
    if value is None:
        return "n/a"
    return format(value, "g") if isinstance(value, float) else str(value)


def junit_tree(summary: dict[str, Any], run_dir: Path | str | None = None) -> ET.ElementTree:
    """<testsuites><testsuite name="x402bench SLO: <scenario>"> with one <testcase> per SLO check."""
    checks = (summary.get("slo") or {}).get("checks") or []
    scenario = (summary.get("scenario") or {}).get("name") or "scenario"
    failed = sum(1 for c in checks if not c.get("passed"))
    counts = {"tests": str(len(checks)), "failures": str(failed), "errors": "0", "skipped": "0"}
    root = ET.Element("testsuites", {"name": "x402bench", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"x402bench SLO: {scenario}", **counts})
    if summary.get("started_at"):  # a live run's start; a sim has no wall-clock start
        suite.set("timestamp", str(summary["started_at"]))
    properties = ET.SubElement(suite, "properties")
    for name, value in (("mode", summary.get("mode")), ("run_id", summary.get("run_id")),
                        ("run_dir", None if run_dir is None else str(run_dir)), ("seed", summary.get("seed"))):
        if value is not None:
            ET.SubElement(properties, "property", {"name": name, "value": str(value)})
    classname = f"x402bench.slo.{scenario}"
    for check in checks:
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": str(check.get("name")), "time": "0"})
        line = (f"{check.get('name')}: measured {_figure(check.get('measured'))}, required {check.get('op')} "
                f"{_figure(check.get('bound'))}")
        if not check.get("passed"):
            failure = ET.SubElement(case, "failure", {"message": line, "type": "SLOViolation"})
            failure.text = str(check.get("message") or line)
        else:
            ET.SubElement(case, "system-out").text = line
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(path: Path | str, summary: dict[str, Any], run_dir: Path | str | None = None) -> Path:
    """Write the XML file (UTF-8, with its declaration); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(summary, run_dir).write(path, encoding="utf-8", xml_declaration=True)
    return path
