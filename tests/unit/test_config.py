from __future__ import annotations

from pathlib import Path

import pytest

from agentledger.config import SETTINGS, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented(setting: object) -> None:
    text = DOCS.read_text()
    assert f"`{setting.name}`" in text and f"`{setting.env}`" in text  # type: ignore[attr-defined]


def test_cli_overrides_beat_environment_which_beats_defaults() -> None:
    env = {"AGENTLEDGER_PORT": "9000", "AGENTLEDGER_CACHE_TTL": "5"}
    s = load_settings({"port": "9100"}, environ=env)
    assert (s.port, s.cache_ttl, s.host) == (9100, 5.0, "127.0.0.1")


def test_bad_values_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="port: expected int"):
        load_settings({"port": "eighty"}, environ={})
    with pytest.raises(ValueError, match="bootstrap: expected true/false"):
        load_settings(environ={"AGENTLEDGER_BOOTSTRAP": "maybe"})
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        load_settings({"nope": "1"}, environ={})
