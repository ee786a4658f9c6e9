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
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis/Valkey Cluster (or: a +cluster scheme)
    prefix: str = "eventflow"
    partitions: int = 1
    durability: Durability = Durability.FAST
    durability_timeout_ms: int = 1000
    redis_timeout_s: float = 2.0
    redis_max_connections: int = 200
    retry_after_s: int = 1
    max_body_bytes: int = 1_048_576
    body_timeout_s: float = 30.0  # an ingest body that has not fully arrived by then is a 408
    max_batch: int = 1000
    idempotency_window_s: int = 86_400
    producer_rate_limit: float = 0.0  # events per second per producer, shared by all web processes; 0: off
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
    # Dashboard: operator sessions, cookies behind a proxy, login throttling, live updates.
    session_idle_s: int = 3600
    session_max_s: int = 12 * 3600
    cookie_secure: str = "auto"  # auto (Secure when the request came over HTTPS) | always | never
    trust_proxy: bool = False  # believe X-Forwarded-Proto/-For from the proxy in front (Fly, nginx)
    login_max_failures: int = 10
    login_window_s: int = 300
    live_ping_s: float = 15.0
    # Observability: metrics endpoints, request logs, trace export, error reporting.
    metrics_token: str | None = None  # bearer token for GET /metrics on the API port (404 while unset)
    metrics_port: int = 0  # internal, unauthenticated metrics port of the web process (0: off)
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR: where granian workers share metrics
    access_log: str = "errors"  # all | errors (status >= 400) | off
    otel_endpoint: str | None = None  # OTLP/HTTP base URL; spans are exported only when set
    sentry_dsn: str | None = None
    # Event types and schemas; retention and archive.
    unknown_types: str = "accept"  # accept | reject events of types nobody registered
    schema_check_recent: int = 100  # recent events a new schema version is tested against
    retention_s: int = 0  # trim (after archiving) events older than this; 0: keep forever
    retention_max_entries: int = 0  # trim (after archiving) beyond this many entries per partition; 0: no limit
    retention_interval_s: float = 60.0
    archive_path: str = ".eventflow/archive"

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
            (0 < self.body_timeout_s <= 3600, "EVENTFLOW_BODY_TIMEOUT_S must be more than 0 and at most 3600"),
            (self.idempotency_window_s >= 1, "EVENTFLOW_IDEMPOTENCY_WINDOW_S must be at least 1"),
            (self.producer_rate_limit >= 0, "EVENTFLOW_PRODUCER_RATE_LIMIT must be 0 (off) or positive"),
            (self.redis_timeout_s > 0, "EVENTFLOW_REDIS_TIMEOUT_S must be positive"),
            (self.redis_max_connections >= 8, "EVENTFLOW_REDIS_MAX_CONNECTIONS must be at least 8"),
            # WAIT/WAITAOF with a timeout of 0 never return: the producer would hang, not get its 503.
            (self.durability_timeout_ms >= 1, "EVENTFLOW_DURABILITY_TIMEOUT_MS must be at least 1"),
            (self.retry_after_s >= 0, "EVENTFLOW_RETRY_AFTER_S must be 0 or positive"),
            (0 < self.port < 65536, "PORT must be 1 to 65535"),
            (self.web_workers >= 1, "EVENTFLOW_WEB_WORKERS must be at least 1"),
            (self.auth_cache_s >= 0, "EVENTFLOW_AUTH_CACHE_S must be 0 (no cache) or positive"),
            (self.attempts_ttl_s >= 1, "EVENTFLOW_ATTEMPTS_TTL_S must be at least 1"),
            (self.shutdown_grace_s >= 0, "EVENTFLOW_SHUTDOWN_GRACE_S must be 0 or positive"),
            (self.audit_rotate_bytes >= 1024, "EVENTFLOW_AUDIT_ROTATE_BYTES must be at least 1024"),
            (self.stats_retention_s >= 60, "EVENTFLOW_STATS_RETENTION_S must be at least 60 (counts are per minute)"),
            # Checked here so the message names the variable (redis-py's own error does not); the
            # value itself is not echoed, it may carry a password.
            (self.redis_url is None or self.redis_url.startswith(_URL_SCHEMES),
             "REDIS_URL must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"),
            (not (self.cluster and (self.redis_url or "").startswith("unix://")),
             "REDIS_URL: a cluster is reached over TCP (redis+cluster:// or rediss+cluster://), not unix://"),
            (self.log_format in ("json", "text"), "EVENTFLOW_LOG_FORMAT must be json or text"),
            (bool(self.prefix) and "{" not in self.prefix and "}" not in self.prefix,
             "EVENTFLOW_PREFIX must be non-empty and contain no braces"),
            (self.cookie_secure in ("auto", "always", "never"),
             "EVENTFLOW_COOKIE_SECURE must be auto, always or never"),
            (self.session_idle_s >= 60, "EVENTFLOW_SESSION_IDLE_S must be at least 60"),
            (self.session_max_s >= self.session_idle_s,
             "EVENTFLOW_SESSION_MAX_S must be at least EVENTFLOW_SESSION_IDLE_S"),
            (self.login_max_failures >= 1, "EVENTFLOW_LOGIN_MAX_FAILURES must be at least 1"),
            (self.login_window_s >= 1, "EVENTFLOW_LOGIN_WINDOW_S must be at least 1"),
            (self.live_ping_s > 0, "EVENTFLOW_LIVE_PING_S must be positive"),
            (self.access_log in ("all", "errors", "off"), "EVENTFLOW_ACCESS_LOG must be all, errors or off"),
            (self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
             "EVENTFLOW_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL"),
            (0 <= self.metrics_port < 65536 and 0 <= self.worker_metrics_port < 65536,
             "EVENTFLOW_METRICS_PORT and EVENTFLOW_WORKER_METRICS_PORT must be 0 (off) to 65535"),
            # Each granian worker counts its own requests; only shared files add them up correctly.
            (self.web_workers == 1 or bool(self.metrics_dir),
             "EVENTFLOW_WEB_WORKERS above 1 needs PROMETHEUS_MULTIPROC_DIR (a folder the web workers share "
             "for metrics; the Docker image sets it)"),
            (self.unknown_types in ("accept", "reject"), "EVENTFLOW_UNKNOWN_TYPES must be accept or reject"),
            (0 <= self.schema_check_recent <= 10_000, "EVENTFLOW_SCHEMA_CHECK_RECENT must be 0 to 10000"),
            (self.retention_s >= 0 and self.retention_max_entries >= 0,
             "EVENTFLOW_RETENTION_S and EVENTFLOW_RETENTION_MAX_ENTRIES must be 0 (off) or positive"),
            (self.retention_interval_s > 0, "EVENTFLOW_RETENTION_INTERVAL_S must be positive"),
            (bool(self.archive_path), "EVENTFLOW_ARCHIVE_PATH must not be empty"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)

    @property
    def cluster(self) -> bool:
        """Whether REDIS_URL points at a cluster: a `redis+cluster://` or `rediss+cluster://` URL, or
        EVENTFLOW_REDIS_CLUSTER with a plain one (a URL handed over by a platform, unchanged)."""
        return self.redis_cluster or "+cluster://" in (self.redis_url or "")

    def redis_cluster_url(self) -> str | None:
        """REDIS_URL in the `+cluster` form connect() reads (None when not a cluster)."""
        url = self.redis_url
        if not self.cluster or url is None:
            return None
        return url if "+cluster://" in url else url.replace("://", "+cluster://", 1)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the dev command use it)."""
        return msgspec.structs.replace(self, **changes)


#: Environment variable -> Settings field. The README table documents each one.
ENV_VARS: dict[str, str] = {
    "REDIS_URL": "redis_url",
    "EVENTFLOW_REDIS_CLUSTER": "redis_cluster",
    "EVENTFLOW_PREFIX": "prefix",
    "EVENTFLOW_PARTITIONS": "partitions",
    "EVENTFLOW_DURABILITY": "durability",
    "EVENTFLOW_DURABILITY_TIMEOUT_MS": "durability_timeout_ms",
    "EVENTFLOW_REDIS_TIMEOUT_S": "redis_timeout_s",
    "EVENTFLOW_REDIS_MAX_CONNECTIONS": "redis_max_connections",
    "EVENTFLOW_RETRY_AFTER_S": "retry_after_s",
    "EVENTFLOW_MAX_BODY_BYTES": "max_body_bytes",
    "EVENTFLOW_BODY_TIMEOUT_S": "body_timeout_s",
    "EVENTFLOW_MAX_BATCH": "max_batch",
    "EVENTFLOW_IDEMPOTENCY_WINDOW_S": "idempotency_window_s",
    "EVENTFLOW_PRODUCER_RATE_LIMIT": "producer_rate_limit",
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
    "EVENTFLOW_SESSION_IDLE_S": "session_idle_s",
    "EVENTFLOW_SESSION_MAX_S": "session_max_s",
    "EVENTFLOW_COOKIE_SECURE": "cookie_secure",
    "EVENTFLOW_TRUST_PROXY": "trust_proxy",
    "EVENTFLOW_LOGIN_MAX_FAILURES": "login_max_failures",
    "EVENTFLOW_LOGIN_WINDOW_S": "login_window_s",
    "EVENTFLOW_LIVE_PING_S": "live_ping_s",
    "EVENTFLOW_METRICS_TOKEN": "metrics_token",
    "EVENTFLOW_METRICS_PORT": "metrics_port",
    "PROMETHEUS_MULTIPROC_DIR": "metrics_dir",
    "EVENTFLOW_ACCESS_LOG": "access_log",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otel_endpoint",
    "SENTRY_DSN": "sentry_dsn",
    "EVENTFLOW_UNKNOWN_TYPES": "unknown_types",
    "EVENTFLOW_SCHEMA_CHECK_RECENT": "schema_check_recent",
    "EVENTFLOW_RETENTION_S": "retention_s",
    "EVENTFLOW_RETENTION_MAX_ENTRIES": "retention_max_entries",
    "EVENTFLOW_RETENTION_INTERVAL_S": "retention_interval_s",
    "EVENTFLOW_ARCHIVE_PATH": "archive_path",
}

_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")

_VAR_OF = {field: var for var, field in ENV_VARS.items()}
