"""Every Redis key EventFlow uses, built from one prefix.

Keys that one Lua script or transaction touches together share a hash tag, so that on a Redis or
Valkey Cluster they land in one slot. Each partition of the log has its own tag: with one partition
(the default) the tag is the bare prefix, so the log is `{eventflow}:events`; with N partitions it is
`{eventflow:0}:events` ... `{eventflow:N-1}:events`. Metadata that no script touches (producers,
users, subscriptions) lives outside the partitions under `eventflow:...`.
"""

from __future__ import annotations

import zlib


class Keys:
    """Key names for one deployment (prefix + partition count)."""

    __slots__ = ("_base", "partitions", "prefix")

    def __init__(self, prefix: str = "eventflow", partitions: int = 1) -> None:
        self.prefix = prefix
        self.partitions = partitions
        tags = [prefix] if partitions == 1 else [f"{prefix}:{p}" for p in range(partitions)]
        self._base = [f"{{{tag}}}:" for tag in tags]

    # -- per partition (share the partition's hash tag) ------------------------------------------
    def base(self, partition: int) -> str:
        """Key prefix of a partition, including its hash tag; the Lua scripts derive keys from it."""
        return self._base[partition]

    def stream(self, partition: int) -> str:
        """The append-only log (one stream per partition)."""
        return self._base[partition] + "events"

    def type_index(self, partition: int, event_type: str) -> str:
        """Entry ids of one event type, in log order (same ids as the log)."""
        return self._base[partition] + "idx:type:" + event_type

    def source_index(self, partition: int, source: str) -> str:
        """Entry ids of one source, in log order (same ids as the log)."""
        return self._base[partition] + "idx:src:" + source

    def event_id(self, partition: int, event_id: str) -> str:
        """Event id -> "<entry id> <source>" for the idempotency window (dedup + lookup by id)."""
        return self._base[partition] + "id:" + event_id

    def source_event_id(self, partition: int, source: str, event_id: str) -> str:
        """Event id -> entry id, for a source whose event id another source used first (dedup only).

        Source names have no spaces, so "<source> <id>" is unambiguous. append.lua builds it too."""
        return self._base[partition] + "ids:" + source + " " + event_id

    def indexed(self, partition: int) -> str:
        """The last log entry the indexes cover (entries XADDed directly are indexed later)."""
        return self._base[partition] + "indexed"

    def dead_letters(self, partition: int) -> str:
        """Dead-lettered deliveries of this partition's events."""
        return self._base[partition] + "dlq"

    def retry_schedule(self, partition: int, group: str) -> str:
        """Sorted set "<l|r>:<entry id>" -> due time (ms) of deliveries waiting for their backoff."""
        return self._base[partition] + "retry:" + group

    def replay(self, partition: int, group: str) -> str:
        """Events queued for redelivery to one group only (dead-letter and history replays)."""
        return self._base[partition] + "replay:" + group

    def attempts(self, partition: int, group: str, entry_id: str) -> str:
        """List of one event's attempt records in one group (only events that ever failed)."""
        return self._base[partition] + "att:" + group + ":" + entry_id

    def seat(self, partition: int, group: str, seat: int) -> str:
        """A worker's lease on reading this partition for one group (consumers/assign.py)."""
        return self._base[partition] + "seat:" + group + ":" + str(seat)

    def partition_of(self, partition_key: str) -> int:
        """The partition that holds events of this partition key (stable across processes)."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(partition_key.encode()) % self.partitions

    # -- metadata (no hash tag needed: never touched together with log keys) ---------------------
    @property
    def producers(self) -> str:
        """Hash: producer name -> JSON record (hashed key, created, revoked...)."""
        return f"{self.prefix}:producers"

    def rate_limit(self, producer: str) -> str:
        """String: the producer's rate-limit state (app/lua/rate_limit.lua)."""
        return f"{self.prefix}:rate:{producer}"

    @property
    def producer_keys(self) -> str:
        """Hash: sha256 of a producer key -> producer name."""
        return f"{self.prefix}:producer-keys"

    def producer_stats(self, name: str) -> str:
        """Hash: events, last_seen_ms of one producer."""
        return f"{self.prefix}:producer-stats:{name}"

    @property
    def consumers(self) -> str:
        """Hash: consumer group name -> JSON of its declared settings (written by the runners)."""
        return f"{self.prefix}:consumers"

    def group_members(self, group: str) -> str:
        """Sorted set: worker consumer id -> last time it asked for seats in this group (ms)."""
        return f"{self.prefix}:members:{group}"

    def heartbeat(self, consumer_id: str) -> str:
        """A worker process's heartbeat (expires when it stops beating)."""
        return f"{self.prefix}:worker:{consumer_id}"

    @property
    def producers_changed(self) -> str:
        """Short stream: a producer was rotated or revoked (every web process drops its auth cache)."""
        return f"{self.prefix}:producers-changed"

    # -- webhooks (notify consumer) --------------------------------------------------------------
    @property
    def webhooks(self) -> str:
        """Hash: subscription id -> JSON record (url, type patterns, secret, enabled...)."""
        return f"{self.prefix}:webhooks"

    @property
    def webhook_deliveries(self) -> str:
        """Hash: subscription id -> JSON of its last delivery (time, status, latency, error)."""
        return f"{self.prefix}:webhook-deliveries"

    def webhook_sent(self, partition: int, delivery: str) -> str:
        """Set of subscription ids one delivery of this partition's events already reached (skipped
        when it is retried); `delivery` is the dispatcher's "<l|r>:<stream id>"."""
        return self._base[partition] + "wh-sent:" + delivery

    # -- audit and analytics consumers -----------------------------------------------------------
    @property
    def audit_leader(self) -> str:
        """The audit writer's leadership lease: holder id, with a TTL (SET NX PX, renewed)."""
        return f"{self.prefix}:audit:leader"

    @property
    def audit_parked(self) -> str:
        """Hash: "<partition>:<entry id>" -> entry a standby audit worker hands to the leader."""
        return f"{self.prefix}:audit:parked"

    def stats_minute(self, minute: int) -> str:
        """Hash of one minute's event counts (minute = ms since the epoch // 60000).

        All minutes share one hash tag so that a flush touching several minutes is one MULTI/EXEC
        on one slot of a cluster."""
        return f"{{{self.prefix}:stats}}:m:{minute}"

    # -- dashboard: operators and their sessions -------------------------------------------------
    @property
    def users(self) -> str:
        """Hash: operator name -> JSON record (role, argon2 password hash, created)."""
        return f"{self.prefix}:users"

    def session(self, token_hash: str) -> str:
        """One operator session (JSON), keyed by the SHA-256 of its cookie; expires when idle."""
        return f"{self.prefix}:session:{token_hash}"

    def user_sessions(self, name: str) -> str:
        """Set of one operator's session hashes (dropped together on delete or password change)."""
        return f"{self.prefix}:user-sessions:{name}"

    def session_flash(self, token_hash: str) -> str:
        """List of one-time notices for a session, shown on its next page."""
        return f"{self.prefix}:flash:{token_hash}"

    def login_failures(self, client: str) -> str:
        """Failed logins from one client address in the current window (INCR, expires)."""
        return f"{self.prefix}:login-failures:{client}"

    # -- observability: worker registry and error monitoring -------------------------------------
    @property
    def workers(self) -> str:
        """Sorted set: worker consumer id -> time of its last heartbeat (ms); metrics count live ones."""
        return f"{self.prefix}:workers"

    @property
    def error_groups(self) -> str:
        """Sorted set: error fingerprint -> last seen (ms); the Errors view lists it newest first."""
        return f"{self.prefix}:errors"

    def error_group(self, fingerprint: str) -> str:
        """Hash of one error group: consumer, type, normalized message, example, counts, first/last seen."""
        return f"{self.prefix}:error:{fingerprint}"

    def error_samples(self, fingerprint: str) -> str:
        """List of the latest event ids that failed with one error group (newest first, a few)."""
        return f"{self.prefix}:error-samples:{fingerprint}"

    # -- event types and schemas (one hash tag: a new version is saved by one script) ------------
    @property
    def event_types(self) -> str:
        """Hash: event type -> JSON record (description, owner, mode, created/updated)."""
        return f"{{{self.prefix}:types}}:registry"

    @property
    def type_versions(self) -> str:
        """Hash: event type -> its current schema version number."""
        return f"{{{self.prefix}:types}}:current"

    def type_schemas(self, event_type: str) -> str:
        """Hash: version number -> JSON of one schema version of an event type (never changed)."""
        return f"{{{self.prefix}:types}}:schemas:{event_type}"

    @property
    def types_changed(self) -> str:
        """Counter bumped by every registry change; processes poll it to refresh compiled validators."""
        return f"{{{self.prefix}:types}}:changed"

    @property
    def type_failure_counts(self) -> str:
        """Hash: "<type>\\n<outcome>" -> validation failures counted (rejected, flagged, dead-lettered)."""
        return f"{{{self.prefix}:types}}:failures"

    def type_recent_failures(self, event_type: str) -> str:
        """List: the latest validation failures of one event type (JSON, newest first, capped)."""
        return f"{{{self.prefix}:types}}:recent:{event_type}"

    # -- retention ----------------------------------------------------------------------------------
    def retention_lease(self, partition: int) -> str:
        """Who is archiving and trimming this partition now (SET NX PX, renewed): one at a time."""
        return self._base[partition] + "retention"
