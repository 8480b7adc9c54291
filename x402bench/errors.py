"""What the CLI does with an error nobody planned for (exit code 3), and the cheap checks of path options
that turn a doomed run into bad input (exit 2) before any work is done.

Exit codes: 0 every SLO passed, 1 an SLO (or a validation, a probe, a sweep point, a compare gate) failed, 2 bad
input or usage, 3 anything else (an internal error: the traceback goes to a log file, one line to stderr)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import TracebackType

OK, SLO_FAILED, BAD_INPUT, INTERNAL_ERROR = 0, 1, 2, 3

LOG_NAME = "x402bench-error.log"

#: Command parameters (by their Python name, the same in every command) naming a folder the command writes
#: into, and a file it writes. Checked before the command runs.
OUTPUT_DIRS = ("out_dir", "live_out", "workdir")
OUTPUT_FILES = ("out_file", "json_out", "json_path", "junit_path", "html_path")


def version() -> str:
    """The installed package's version ("unknown" when run from a checkout that was never installed)."""
    from importlib import metadata

    try:
        return metadata.version("x402bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be (or be created as) a folder to write into, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} exists and is not a folder"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    base = _nearest_existing(path.parent if path.parent != path else path)
    if base.exists() and not base.is_dir():
        return f"{path} cannot be created: {base} is a file, not a folder"
    if base.exists() and not os.access(base, os.W_OK):
        return f"{path} cannot be created: {base} is not writable"
    return None


def output_file_problem(path: Path) -> str | None:
    """Why `path` cannot be written as a file, or None (an existing file is overwritten)."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    base = _nearest_existing(path.parent)
    if base.exists() and not base.is_dir():
        return f"{path} cannot be written: {base} is a file, not a folder"
    return None


def path_problems(params: dict[str, object]) -> list[str]:
    """The problems of a command's path options, as `--option: why`."""
    found = []
    for names, check in ((OUTPUT_DIRS, output_dir_problem), (OUTPUT_FILES, output_file_problem)):
        for name in names:
            value = params.get(name)
            if isinstance(value, Path) and (why := check(value)):
                found.append(why)
    return found


def _run_dir(tb: TracebackType | None) -> Path | None:
    """The run folder the failing code was working in: the innermost frame with a local `run_dir` that is
    an existing folder (the runners, sim.run and x402bench.results all call it that)."""
    found = None
    while tb is not None:
        value = tb.tb_frame.f_locals.get("run_dir")
        if isinstance(value, (str, Path)) and Path(value).is_dir():
            found = Path(value)
        tb = tb.tb_next
    return found


def write_crash_log(exc: BaseException, argv: list[str] | None = None) -> Path:
    """Write the traceback of `exc` to x402bench-error.log in the run folder the failing code was
    writing (when it had one), else to a file of its own in the temp dir; return its path."""
    text = (f"x402bench {version()} internal error at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
            f"command: {' '.join(argv if argv is not None else sys.argv)}\n"
            f"python: {sys.version.split()[0]} ({sys.executable})\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    run_dir = _run_dir(exc.__traceback__)
    if run_dir is not None:
        try:
            path = run_dir / LOG_NAME
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix="x402bench-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(name)


def one_line(exc: BaseException) -> str:
    """`ErrorType: first line of its message`."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
