"""Settings.from_env: typed values from the environment, and errors that name the variable."""

from __future__ import annotations

import pytest

from app.errors import ConfigError
from app.settings import ENV_VARS, Durability, Settings


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url is None
    assert settings.prefix == "eventflow"
    assert settings.partitions == 1
    assert settings.durability is Durability.FAST
    assert settings.max_batch == 1000
    assert settings.idempotency_window_s == 86_400


def test_values_are_converted_from_strings_to_their_types() -> None:
    settings = Settings.from_env({
        "REDIS_URL": "redis://cache:6380/2",
        "EVENTFLOW_PREFIX": "ef",
        "EVENTFLOW_PARTITIONS": "4",
        "EVENTFLOW_DURABILITY": "fsync",
        "EVENTFLOW_REDIS_TIMEOUT_S": "0.5",
        "EVENTFLOW_MAX_BATCH": "10",
        "EVENTFLOW_AUTH_CACHE_S": "0",
        "EVENTFLOW_API_TOKEN": "s3cret",
        "PORT": "9000",
    })
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.prefix == "ef"
    assert settings.partitions == 4
    assert settings.durability is Durability.FSYNC
    assert settings.redis_timeout_s == 0.5
    assert settings.max_batch == 10
    assert settings.auth_cache_s == 0.0
    assert settings.api_token == "s3cret"
    assert settings.port == 9000


def test_empty_values_count_as_unset() -> None:
    assert Settings.from_env({"EVENTFLOW_PARTITIONS": "", "REDIS_URL": ""}) == Settings()


def test_variables_outside_the_documented_list_are_ignored() -> None:
    assert Settings.from_env({"prefix": "nope", "EVENTFLOW_UNKNOWN": "1"}).prefix == "eventflow"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("EVENTFLOW_PARTITIONS", "many"),
        ("EVENTFLOW_DURABILITY", "eventually"),
        ("EVENTFLOW_MAX_BODY_BYTES", "1MB"),
        ("EVENTFLOW_REDIS_TIMEOUT_S", "soon"),
        ("EVENTFLOW_AUTH_CACHE_S", "x"),
        ("PORT", "http"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert var in info.value.detail
    assert value in info.value.detail


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("EVENTFLOW_PARTITIONS", "0"),
        ("EVENTFLOW_MAX_BATCH", "0"),
        ("EVENTFLOW_MAX_BODY_BYTES", "100"),
        ("EVENTFLOW_IDEMPOTENCY_WINDOW_S", "0"),
        ("EVENTFLOW_REDIS_TIMEOUT_S", "0"),
        ("EVENTFLOW_LOG_FORMAT", "xml"),
        ("EVENTFLOW_LOG_LEVEL", "verbose"),
        ("EVENTFLOW_PREFIX", "{ef}"),
        ("REDIS_URL", "http://localhost:6379"),
        # Numbers a process would take and then misbehave with (a granian traceback for a port, a
        # durability WAIT of 0 ms that never returns, records that expire at once, a negative grace).
        ("PORT", "-5"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("EVENTFLOW_WEB_WORKERS", "0"),
        ("EVENTFLOW_DURABILITY_TIMEOUT_MS", "0"),
        ("EVENTFLOW_RETRY_AFTER_S", "-1"),
        ("EVENTFLOW_AUTH_CACHE_S", "-1"),
        ("EVENTFLOW_AUTH_CACHE_S", "nan"),
        ("EVENTFLOW_ATTEMPTS_TTL_S", "0"),
        ("EVENTFLOW_SHUTDOWN_GRACE_S", "-5"),
        ("EVENTFLOW_SHUTDOWN_GRACE_S", "nan"),
        ("EVENTFLOW_AUDIT_ROTATE_BYTES", "0"),
        ("EVENTFLOW_STATS_RETENTION_S", "0"),
    ],
)
def test_a_value_out_of_range_names_its_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert var in info.value.detail


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://user:pw@host:6380", "unix:///tmp/r.sock"])
def test_redis_urls_of_every_scheme_redis_py_speaks_are_accepted(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


def test_every_settings_field_has_exactly_one_variable() -> None:
    fields = set(Settings.__struct_fields__)
    assert set(ENV_VARS.values()) == fields
    assert len(ENV_VARS) == len(fields)


def test_replace_returns_a_changed_copy_and_leaves_the_original() -> None:
    base = Settings()
    changed = base.replace(max_batch=5)
    assert changed.max_batch == 5
    assert base.max_batch == 1000


@pytest.mark.parametrize(("env", "cluster_url"), [
    ({"REDIS_URL": "redis+cluster://a:7000,b:7001"}, "redis+cluster://a:7000,b:7001"),
    ({"REDIS_URL": "rediss+cluster://u:pw@a:7000"}, "rediss+cluster://u:pw@a:7000"),
    ({"REDIS_URL": "redis://a:7000", "EVENTFLOW_REDIS_CLUSTER": "true"}, "redis+cluster://a:7000"),
    ({"REDIS_URL": "rediss://u:pw@a:7000", "EVENTFLOW_REDIS_CLUSTER": "true"}, "rediss+cluster://u:pw@a:7000"),
    ({"REDIS_URL": "redis://a:7000"}, None),
])
def test_a_cluster_is_named_by_a_cluster_scheme_or_by_eventflow_redis_cluster(
    env: dict[str, str], cluster_url: str | None
) -> None:
    settings = Settings.from_env(env)
    assert settings.cluster is (cluster_url is not None)
    assert settings.redis_cluster_url() == cluster_url
