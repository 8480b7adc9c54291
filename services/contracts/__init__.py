"""Solidity sources of the world's contracts and their committed compiled artifacts.

Artifacts are built by `python -m services.contracts.build` (see build.py) and committed, so
nothing at run time needs node or solc.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json"))
        raise FileNotFoundError(f"no artifact {name!r} in {ARTIFACTS_DIR} (known: {known}); run `make contracts`")
    return json.loads(path.read_text())


def load_artifact(name: str) -> dict[str, Any]:
    """The compiled artifact of contract `name` (abi, bytecode, deployedBytecode, compiler, settings).

    Returns a fresh copy each time, so callers may modify it without affecting others.
    """
    return json.loads(json.dumps(_load(name)))


def link(artifact: dict[str, Any], libraries: dict[str, str]) -> str:
    """The artifact's creation bytecode with library addresses patched in.

    `libraries` maps a library's contract name (e.g. "SignatureChecker") to its deployed address;
    every library the artifact references must be given.
    """
    code = artifact["bytecode"][2:]
    for refs in artifact.get("linkReferences", {}).values():
        for library, places in refs.items():
            if library not in libraries:
                raise KeyError(f"{artifact['contractName']} needs library {library}; pass its address")
            address = libraries[library].removeprefix("0x").lower()
            for place in places:
                start, length = 2 * place["start"], 2 * place["length"]
                code = code[:start] + address.rjust(length, "0") + code[start + length :]
    if "__$" in code:
        raise ValueError(f"{artifact['contractName']} still has unlinked library placeholders")
    return "0x" + code
