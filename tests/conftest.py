"""Shared pytest fixtures. Keep this small: fixtures used by one file belong in that file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.chain import Anvil

#: Mining modes a test can ask for with `@pytest.mark.parametrize("anvil", [...], indirect=True)`.
_MINING = {"auto": ("auto", None), "interval": ("interval", 0.2), "manual": ("manual", None)}


@pytest.fixture
def anvil(request: pytest.FixtureRequest) -> Iterator[Anvil]:
    """A fresh real Anvil per test (it starts in well under a second), stopped by its PID after.

    Automine by default; parametrize indirectly with "interval" (0.2 s blocks) or "manual".
    """
    mining, block_time = _MINING[getattr(request, "param", "auto")]
    chain = Anvil(mining=mining, block_time_s=block_time)
    with chain:
        yield chain
    assert chain.process is None, "Anvil was left running"
