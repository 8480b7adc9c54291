"""Scenario paths that are not scenario files, as a user meets them: `x402bench check FILE` in its
own process must exit 2 with one line naming the file and what is wrong with it, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x402bench", "check", *args], capture_output=True, text=True,
                          timeout=120)


def assert_refused(done: subprocess.CompletedProcess[str], path: Path, *words: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    assert str(path) in done.stderr, output
    for word in words:
        assert word in done.stderr, output


VALID = b"name: x\nservices: [{name: a, path: /a, price: 1}]\n"


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe name: x", ["not UTF-8 text", "byte 0xff at offset 0", "UTF-16"]),
    ("name: x\nservices: [{name: a, path: /a, price: 1}]\n".encode("utf-16"), ["not UTF-8 text", "UTF-16"]),
    (VALID + "# café, saved as Latin-1\n".encode("latin-1"), ["not UTF-8 text", f"byte 0xe9 at offset {len(VALID) + 5}"]),
    (b"name: x\x00\nservices: []\n", ["not a text file", "NUL byte at offset 7"]),
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), ["not UTF-8 text"]),
    (b"", ["holds no YAML document"]),
    (b"services: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["nested too deeply"]),
], ids=["utf-16 bom and text", "utf-16 file", "latin-1", "nul byte", "binary", "empty", "deep nesting"])
def test_a_file_that_is_not_a_scenario_exits_2_naming_it(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_bytes(content)
    assert_refused(check(str(path)), path, *words)


def test_a_directory_exits_2_naming_it(tmp_path: Path) -> None:
    assert_refused(check(str(tmp_path)), tmp_path, "is a directory")


def test_a_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert_refused(check(str(path)), path, "cannot read", "No such file")


def test_utf8_with_a_byte_order_mark_is_a_scenario(tmp_path: Path) -> None:
    """Some editors write a UTF-8 byte order mark; the text is still UTF-8 and must load."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID)
    done = check(str(path))
    assert done.returncode == 0, done.stderr
