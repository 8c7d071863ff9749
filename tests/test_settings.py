"""Settings precedence: flags over environment over TOML file over defaults."""

from pathlib import Path

import pytest

from fleetbus.errors import ConfigError
from fleetbus.runtime.settings import EdgeSettings, load_settings


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "edge.toml"
    config.write_text(
        'site = "r1-e1"\nregion = "r1"\nheartbeat_interval = 7.0\nhttp_port = 9100\n'
        'nats_url = "nats://file:4222"\n[labels]\nstore = "42"\n'
    )
    monkeypatch.setenv("FLEETBUS_HEARTBEAT_INTERVAL", "3")
    monkeypatch.setenv("FLEETBUS_HTTP_PORT", "9200")
    settings = load_settings(EdgeSettings, config, http_port=9300)
    assert settings.http_port == 9300  # flag
    assert settings.heartbeat_interval == 3.0  # env over file
    assert settings.nats_url == "nats://file:4222"  # file over default
    assert settings.labels == {"store": "42"}
    assert settings.shutdown_timeout == 10.0  # default


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path):
    config = tmp_path / "edge.toml"
    config.write_text('site = "r1-e1"\nregion = "r1"\nheartbeat_intervall = 2\n')
    with pytest.raises(ConfigError, match="heartbeat_intervall"):
        load_settings(EdgeSettings, config)


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"cannot read settings file .*nope\.toml"):
        load_settings(EdgeSettings, tmp_path / "nope.toml")


def test_site_and_region_must_differ():
    with pytest.raises(ConfigError, match="site and region must differ"):
        load_settings(EdgeSettings, site="r1", region="r1")
