"""Compile the Solidity sources here into committed, byte-reproducible JSON artifacts.

Why a script and not a framework: the only toolchain is the solc-js pinned in package.json, run
through node with a fixed standard-JSON input, so a rebuild on any machine gives the same bytes
(`--check` proves it; the test suite does too).

    python -m services.contracts.build [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONTRACTS_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = CONTRACTS_DIR / "artifacts"
REPO_ROOT = CONTRACTS_DIR.parent.parent
SOLC_JS = REPO_ROOT / "node_modules" / "solc"

#: Fixed compiler settings: changing any of them changes every artifact (and the gas figures).
SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "optimizer": {"enabled": True, "runs": 200},
    "metadata": {"bytecodeHash": "none"},
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.bytecode.linkReferences", "evm.deployedBytecode.object"]}
    },
}

# Reads the standard-JSON input on stdin, prints {"version", "output"} on stdout.
_NODE_DRIVER = """
const solc = require(process.argv[1]);
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify({version: solc.version(), output: JSON.parse(solc.compile(input))}));
});
"""


class BuildError(RuntimeError):
    """solc reported errors, or node/solc-js is missing."""


def sources() -> dict[str, str]:
    """All .sol files of this directory, by file name, in a stable order."""
    return {p.name: p.read_text() for p in sorted(CONTRACTS_DIR.glob("*.sol"))}


def compile_sources(srcs: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Run solc-js on `srcs`; return (compiler version, standard-JSON output)."""
    if not (SOLC_JS / "soljson.js").exists():
        raise BuildError(f"solc-js is not installed at {SOLC_JS}; run `make setup` (it runs `npm ci`)")
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in srcs.items()},
        "settings": SETTINGS,
    }
    proc = subprocess.run(
        ["node", "-e", _NODE_DRIVER, str(SOLC_JS)],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"node/solc-js failed: {proc.stderr.strip()}")
    reply = json.loads(proc.stdout)
    output = reply["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BuildError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    return reply["version"], output


def artifacts(version: str, output: dict[str, Any]) -> dict[str, str]:
    """One JSON text per deployable contract, keyed by file name, formatted stably."""
    result: dict[str, str] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        for contract_name, data in sorted(contracts.items()):
            bytecode = data["evm"]["bytecode"]["object"]
            if not bytecode:  # interfaces and abstract contracts: nothing to deploy
                continue
            artifact = {
                "contractName": contract_name,
                "sourceName": source_name,
                "abi": data["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                # {source: {library: [{start, length}]}}: byte offsets to patch (see `link`)
                "linkReferences": data["evm"]["bytecode"].get("linkReferences", {}),
                "compiler": {"name": "solc-js", "version": version},
                "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
            }
            result[f"{contract_name}.json"] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return result


def build(out_dir: Path = ARTIFACTS_DIR) -> list[Path]:
    """Compile every source and write its artifacts into `out_dir`; return the files written."""
    version, output = compile_sources(sources())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in artifacts(version, output).items():
        path = out_dir / file_name
        path.write_text(text)
        written.append(path)
    return written


def check(committed: Path = ARTIFACTS_DIR) -> list[str]:
    """Rebuild into a temporary directory; return the differences from `committed` (none = ok)."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in build(Path(tmp))}
    existing = {p.name: p.read_bytes() for p in committed.glob("*.json")} if committed.exists() else {}
    for name in sorted(fresh.keys() | existing.keys()):
        if name not in existing:
            problems.append(f"{name}: missing from {committed}")
        elif name not in fresh:
            problems.append(f"{name}: stale, no source builds it any more")
        elif fresh[name] != existing[name]:
            problems.append(f"{name}: differs from a fresh build")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR, help="artifact directory")
    parser.add_argument("--check", action="store_true", help="fail if the artifacts are not what a rebuild gives")
    args = parser.parse_args(argv)
    if shutil.which("node") is None:
        print("node is not on PATH", file=sys.stderr)
        return 2
    try:
        if args.check:
            problems = check(args.out)
            for problem in problems:
                print(problem, file=sys.stderr)
            print("artifacts are up to date" if not problems else f"{len(problems)} artifact(s) out of date")
            return 1 if problems else 0
        for path in build(args.out):
            print(path)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
