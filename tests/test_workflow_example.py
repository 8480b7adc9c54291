"""The example GitHub Actions gate (.github/workflows/x402bench-gate.yml) stays runnable as the CLI changes.

Nothing here runs GitHub; what can rot is checked against the code: every `x402bench` command line in the
workflow names a command and options the CLI has, its scenario is valid, its `--fail-if` gates parse, the
Makefile target it calls exists, and the run folder is uploaded whatever the outcome.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from services.paths import IMPORT_ROOT
from x402bench import cli
from x402bench.results.compare import parse_gate
from x402bench.scenario import load_scenario

WORKFLOW = IMPORT_ROOT / ".github" / "workflows" / "x402bench-gate.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the bare key `on` as true
    return data


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def _uses(workflow: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in _steps(workflow) if str(s.get("uses", "")).split("@")[0] == action]


def _command_lines(workflow: dict[str, Any]) -> list[list[str]]:
    """Each `x402bench ...` invocation of the run scripts, as argv after the program name."""
    found = []
    for step in _steps(workflow):
        script = re.sub(r"\\\n\s*", " ", step.get("run", ""))  # join continued lines
        for line in script.splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if Path(word).name == "x402bench":
                    found.append(words[i + 1:])
    return found


def test_it_sets_up_python_and_node_then_make_setup(workflow: dict[str, Any]) -> None:
    assert set(workflow["on"]) >= {"push", "pull_request"}
    (python,) = _uses(workflow, "actions/setup-python")
    assert tuple(int(p) for p in str(python["with"]["python-version"]).split(".")) >= (3, 11)
    assert _uses(workflow, "actions/setup-node") and _uses(workflow, "actions/checkout")
    runs = [s.get("run", "") for s in _steps(workflow)]
    assert any(r.strip() == "make setup" for r in runs)
    assert re.search(r"^setup:", (IMPORT_ROOT / "Makefile").read_text(), re.M)


def test_every_x402bench_command_and_option_exists(workflow: dict[str, Any]) -> None:
    cli._register()
    group = typer.main.get_command(cli.app)  # the click group a user's command line meets
    lines = _command_lines(workflow)
    assert {argv[0] for argv in lines} >= {"load", "compare"}
    for argv in lines:
        command = group.commands[argv[0]]
        options = {name for param in command.params for name in getattr(param, "opts", [])}
        used = [word.split("=")[0] for word in argv[1:] if word.startswith("-")]
        assert set(used) <= options, (argv, set(used) - options)
        for value in (argv[i + 1] for i, word in enumerate(argv) if word == "--fail-if"):
            parse_gate(value)  # raises on an unknown metric or a malformed gate
        for scenario in (word for word in argv[1:] if word.endswith(".yaml")):
            assert load_scenario(IMPORT_ROOT / scenario).slo is not None


def test_the_load_step_gates_on_its_exit_code_and_the_run_folder_is_always_kept(workflow: dict[str, Any]) -> None:
    (load,) = [s for s in _steps(workflow) if s.get("id") == "load"]
    assert "exit $code" in load["run"] and "continue-on-error" not in load
    (out,) = [argv[argv.index("--out") + 1] for argv in _command_lines(workflow) if argv[0] == "load"]
    (upload,) = _uses(workflow, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert f"{out}/" in upload["with"]["path"].split()
