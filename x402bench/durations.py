"""Durations as people type them: `90s`, `2m`, `1h30m`, `500ms`, `1.5s` or bare seconds (`90`, `2.5`).

One parser for the command line (`-t/--run-time`, Locust's spelling) and for the scenario file's
`run.duration_s` / `run.warmup_s`, so a run time written either way means the same. Locust's own
`parse_timespan` takes neither milliseconds nor fractions, and the libraries that do are unmaintained
or much larger than these few lines; DURATION_PATTERN is also what the JSON Schema offers editors.
"""

from __future__ import annotations

import math
import re

#: Units, largest first, in seconds. A duration names each at most once, in this order.
UNITS: dict[str, float] = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
#: The whole grammar: a bare number of seconds, or `<number><unit>` parts in the order h, m, s, ms.
DURATION_PATTERN = (rf"^(?:{_NUMBER}|(?=[0-9.])(?:{_NUMBER}h)?(?:{_NUMBER}m(?!s))?(?:{_NUMBER}s)?"
                    rf"(?:{_NUMBER}ms)?)$")
_PARTS = re.compile(rf"^(?:(?P<bare>{_NUMBER})|(?=[0-9.])(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m(?!s))?"
                    rf"(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?)$")

EXAMPLES = "e.g. 90s, 2m, 1h30m, 500ms, or a number of seconds"


def parse_duration(value: str | float | int) -> float:
    """Seconds in `value`; ValueError naming the value and the accepted forms otherwise.

    Negative and non-finite values are refused here; whether zero is allowed is the caller's field's
    business (a run of 0 s is refused by the scenario model, a warmup of 0 s is fine)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration ({EXAMPLES})")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        match = _PARTS.match(text)
        if not text or match is None or not any(match.groupdict().values()):
            raise ValueError(f"{value!r} is not a duration ({EXAMPLES})")
        if match["bare"] is not None:
            seconds = float(match["bare"])
        else:
            seconds = sum(float(match[unit]) * factor for unit, factor in UNITS.items() if match[unit] is not None)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration: it must be a finite number of seconds >= 0")
    return seconds

