"""Broker settings files: the shipped template loads; mistakes are one clear line."""

from pathlib import Path

import pytest

from fleetsim.broker import config
from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError

TEMPLATE = Path(__file__).parent.parent / "brokers" / "embedded.toml"


def test_shipped_template_loads() -> None:
    settings = config.load(TEMPLATE)
    assert settings["host"] == "127.0.0.1" and settings["session_tickets"] is False and settings["drop_revoked"]
    assert settings["max_packet_size"] == 65536 and settings["connect_timeout_s"] == 10
    assert settings["device_topics"] == ("fleet/+/%m/%u/#",)
    assert settings["max_queued_bytes"] == BrokerOptions().max_queued_bytes  # the file states the default
    assert settings["max_subscriptions"] == BrokerOptions().max_subscriptions
    for key in ("max_inflight_messages", "max_queued_messages", "max_session_queue_bytes"):
        assert settings[key] == getattr(BrokerOptions(), key)
    assert settings["max_retained_per_client"] == BrokerOptions().max_retained_per_client
    assert settings["max_retained_bytes"] == BrokerOptions().max_retained_bytes


@pytest.mark.parametrize(("text", "message"), [
    ("prot = 1", "unknown key 'prot'; did you mean 'port'?"),
    ('port = "x"', "port must be a int"),
    ("port = true", "port must be a int"),
    ("port = ", "invalid TOML"),
    ("max_packet_size = 64", "out of range; use 1024 to"),
    ("max_queued_bytes = 1000", "out of range; use 65536 to"),
    ("max_inflight_messages = 0", "out of range; use 1 to"),
    ("max_retained_per_client = -1", "out of range; use 0 to"),
    ("connect_timeout_s = true", "connect_timeout_s must be a number"),
    ('device_topics = ["fleet/#/%u"]', "not a valid MQTT topic filter"),
    ("device_topics = [1]", "must list strings"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(BrokerError, match=message):
        config.load(path)
