"""`eventflow consume [NAME ...]`: the built-in consumers by default, some of them by name; consumer
names stable per process slot (EVENTFLOW_CONSUMER_ID, else the Fly machine id or host, plus the slot)."""

from __future__ import annotations

import socket
from pathlib import Path

import fakeredis
import pytest

from app.errors import ConfigError
from app.settings import Settings
from consumers.cli import load
from consumers.runner import consumer_id


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(audit_path=str(tmp_path / "audit"))


async def test_consume_runs_every_built_in_consumer_by_default(settings: Settings) -> None:
    loaded = load([], None, settings, fakeredis.FakeAsyncRedis())
    assert [c.name for c in loaded] == ["audit", "notify", "analytics"]


async def test_consume_names_pick_some_of_them_and_an_unknown_name_is_a_config_error(settings: Settings) -> None:
    redis = fakeredis.FakeAsyncRedis()
    assert [c.name for c in load(["analytics", "audit"], None, settings, redis)] == ["analytics", "audit"]
    with pytest.raises(ConfigError) as info:
        load(["audit", "emails"], None, settings, redis)
    assert "emails" in info.value.detail and "analytics, audit, notify" in info.value.detail


@pytest.mark.parametrize(("environ", "expected"), [
    ({"FLY_MACHINE_ID": "3d8d9c4b", "PS": "worker.2"}, "3d8d9c4b-2"),
    ({"FLY_MACHINE_ID": "3d8d9c4b"}, "3d8d9c4b-1"),
    ({"PS": "worker.3"}, f"{socket.gethostname()}-3"),
    ({}, f"{socket.gethostname()}-1"),
])
def test_a_consumer_name_is_the_machine_plus_the_procfile_slot(environ: dict[str, str], expected: str) -> None:
    assert consumer_id(Settings(), environ) == expected


def test_eventflow_consumer_id_names_the_consumer_outright() -> None:
    settings = Settings.from_env({"EVENTFLOW_CONSUMER_ID": "billing-worker-a"})
    assert consumer_id(settings, {"FLY_MACHINE_ID": "3d8d9c4b", "PS": "worker.2"}) == "billing-worker-a"


async def _noop(delivery: object) -> None:
    return None


@pytest.mark.parametrize(("options", "named"), [
    ({"lease_s": 0}, "lease_s"),  # reclaimed every delivery while it ran: 200 deliveries of 5 events in 2 s
    ({"lease_s": -1}, "lease_s"),  # read nothing at all, without a word
    ({"lease_s": float("nan")}, "lease_s"),
    ({"lease_s": float("inf")}, "lease_s"),
    ({"start": "begining"}, "start"),  # a typo started the group at the end: the log was never delivered
    ({"types": "order.*"}, "types"),  # one string is its characters: "*" wanted every event
    ({"timeout_s": 0}, "timeout_s"),  # every handler stopped at once
    ({"timeout_s": float("nan")}, "timeout_s"),
    ({"timeout_s": "30"}, "timeout_s"),
])
def test_a_consumer_whose_settings_cannot_work_is_a_config_error_at_start_up(options: dict[str, object],
                                                                             named: str) -> None:
    from consumers.base import Consumer, consumer

    with pytest.raises(ConfigError) as info:
        Consumer("emails", _noop, **options)  # type: ignore[arg-type]
    assert named in info.value.detail and "emails" in info.value.detail
    with pytest.raises(ConfigError):
        consumer("emails", **options)(_noop)  # type: ignore[arg-type]


def test_a_handler_timeout_of_none_is_no_limit() -> None:
    from consumers.base import Consumer

    assert Consumer("emails", _noop).timeout_s == 300.0
    assert Consumer("emails", _noop, timeout_s=None).spec()["timeout_s"] is None
