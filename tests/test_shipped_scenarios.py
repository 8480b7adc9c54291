"""A shipped scenario stands in for `scenarios/NAME.yaml` only where no such file exists: the user's file wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from x402bench import shipped
from x402bench.scenario import ScenarioError, load_scenario


def test_the_user_s_file_wins_and_only_scenarios_names_fall_back(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "smoke.yaml" in shipped.names()
    assert load_scenario("scenarios/smoke.yaml").name == "smoke"  # nothing here: the shipped one
    assert load_scenario("smoke.yaml").name == "smoke"
    mine = tmp_path / "scenarios" / "smoke.yaml"
    mine.parent.mkdir()
    mine.write_text((shipped.SHIPPED_DIR / "smoke.yaml").read_text().replace("name: smoke", "name: mine"))
    assert load_scenario("scenarios/smoke.yaml").name == "mine"
    for missing in ("elsewhere/smoke.yaml", "scenarios/no-such.yaml", str(tmp_path / "smoke.yaml")):
        with pytest.raises(ScenarioError, match="cannot read the scenario file"):
            load_scenario(missing)
