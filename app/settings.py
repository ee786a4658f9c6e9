"""Settings: one frozen, typed struct built from the environment.

Every variable is documented in the README's configuration table; `ENV_VARS` below is the single
list the README table and `eventflow config` are checked against.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from app.errors import ConfigError


class Durability(enum.StrEnum):
    """When ingest answers 202 (see README, "Durability")."""

    FAST = "fast"  # after the append reached Redis memory (and its AOF buffer)
    FSYNC = "fsync"  # after the append is fsynced on the server's disk
    REPLICA = "replica"  # after at least one replica acknowledged it


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Runtime configuration. Build it with `Settings.from_env(os.environ)`."""

    redis_url: str | None = None
    prefix: str = "eventflow"
    partitions: int = 1
    durability: Durability = Durability.FAST
    durability_timeout_ms: int = 1000
    redis_timeout_s: float = 2.0
    retry_after_s: int = 1
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    idempotency_window_s: int = 86_400
    port: int = 8000
    web_workers: int = 1
    data_dir: str = ".eventflow"
    log_format: str = "json"
    log_level: str = "INFO"
    auth_cache_s: float = 1.0
    api_token: str | None = None
    attempts_ttl_s: int = 7 * 86_400
    consumer_id: str | None = None
    worker_metrics_port: int = 9100
    shutdown_grace_s: float = 20.0
    allow_private_webhooks: bool = False
    audit_path: str = ".eventflow/audit"
    audit_rotate_bytes: int = 64 * 1024 * 1024
    stats_retention_s: int = 7 * 86_400

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every `ENV_VARS` name present in `environ`; fail naming the variable at fault."""
        raw: dict[str, Any] = {}
        for var, field in ENV_VARS.items():
            value = environ.get(var)
            if value is not None and value != "":
                raw[field] = value
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            # msgspec says "... - at `$.field`"; name the variable instead of the field.
            field = str(exc).rpartition("$.")[2].rstrip("`")
            var = _VAR_OF.get(field, "?")
            raise ConfigError(f"{var}={raw.get(field)!r} is invalid: {exc}") from None
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field and range checks; raise ConfigError naming the variable."""
        rules = [
            (self.partitions >= 1, "EVENTFLOW_PARTITIONS must be at least 1"),
            (self.max_batch >= 1, "EVENTFLOW_MAX_BATCH must be at least 1"),
            (self.max_body_bytes >= 1024, "EVENTFLOW_MAX_BODY_BYTES must be at least 1024"),
            (self.idempotency_window_s >= 1, "EVENTFLOW_IDEMPOTENCY_WINDOW_S must be at least 1"),
            (self.redis_timeout_s > 0, "EVENTFLOW_REDIS_TIMEOUT_S must be positive"),
            # Checked here so the message names the variable (redis-py's own error does not); the
            # value itself is not echoed, it may carry a password.
            (self.redis_url is None or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
             "REDIS_URL must start with redis://, rediss:// or unix://"),
            (self.log_format in ("json", "text"), "EVENTFLOW_LOG_FORMAT must be json or text"),
            (bool(self.prefix) and "{" not in self.prefix and "}" not in self.prefix,
             "EVENTFLOW_PREFIX must be non-empty and contain no braces"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the dev command use it)."""
        return msgspec.structs.replace(self, **changes)


#: Environment variable -> Settings field. The README table documents each one.
ENV_VARS: dict[str, str] = {
    "REDIS_URL": "redis_url",
    "EVENTFLOW_PREFIX": "prefix",
    "EVENTFLOW_PARTITIONS": "partitions",
    "EVENTFLOW_DURABILITY": "durability",
    "EVENTFLOW_DURABILITY_TIMEOUT_MS": "durability_timeout_ms",
    "EVENTFLOW_REDIS_TIMEOUT_S": "redis_timeout_s",
    "EVENTFLOW_RETRY_AFTER_S": "retry_after_s",
    "EVENTFLOW_MAX_BODY_BYTES": "max_body_bytes",
    "EVENTFLOW_MAX_BATCH": "max_batch",
    "EVENTFLOW_IDEMPOTENCY_WINDOW_S": "idempotency_window_s",
    "PORT": "port",
    "EVENTFLOW_WEB_WORKERS": "web_workers",
    "EVENTFLOW_DATA_DIR": "data_dir",
    "EVENTFLOW_LOG_FORMAT": "log_format",
    "EVENTFLOW_LOG_LEVEL": "log_level",
    "EVENTFLOW_AUTH_CACHE_S": "auth_cache_s",
    "EVENTFLOW_API_TOKEN": "api_token",
    "EVENTFLOW_ATTEMPTS_TTL_S": "attempts_ttl_s",
    "EVENTFLOW_CONSUMER_ID": "consumer_id",
    "EVENTFLOW_WORKER_METRICS_PORT": "worker_metrics_port",
    "EVENTFLOW_SHUTDOWN_GRACE_S": "shutdown_grace_s",
    "EVENTFLOW_ALLOW_PRIVATE_WEBHOOKS": "allow_private_webhooks",
    "EVENTFLOW_AUDIT_PATH": "audit_path",
    "EVENTFLOW_AUDIT_ROTATE_BYTES": "audit_rotate_bytes",
    "EVENTFLOW_STATS_RETENTION_S": "stats_retention_s",
}

_VAR_OF = {field: var for var, field in ENV_VARS.items()}
