"""What the fault suite checks once the faults are over: the log against the 202s, the consumer
groups (nothing pending, nothing behind, nothing scheduled for retry), deliveries per entry, the
audit log, and the lifecycle the API reports."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from app.audit import log_files, verify
from app.keys import Keys
from tests.fault.stack import GROUPS, Stack


@dataclass
class LogCheck:
    acknowledged: int
    lost: list[str]  # acknowledged ids missing from the log
    doubled: list[str]  # ids appended more than once
    wrong_entry: list[str]  # acknowledged with one entry id, logged under another


async def check_log(redis: Redis, keys: Keys, acked: dict[str, str]) -> LogCheck:
    """Every acknowledged event is in the log exactly once, under the entry id its 202 named."""
    logged: dict[str, list[str]] = collections.defaultdict(list)
    for entry_id, fields in await redis.xrange(keys.stream(0)):
        logged[fields[b"id"].decode()].append(entry_id.decode())
    return LogCheck(
        acknowledged=len(acked),
        lost=sorted(i for i in acked if i not in logged),
        doubled=sorted(i for i, entries in logged.items() if len(entries) > 1),
        wrong_entry=sorted(i for i, e in acked.items() if i in logged and logged[i] != [e]),
    )


async def backlog(redis: Redis, keys: Keys) -> dict[str, int]:
    """Per group: entries pending (delivered, not acknowledged), not yet delivered, or scheduled for retry."""
    stream = keys.stream(0)
    out: dict[str, int] = {}
    for group in await redis.xinfo_groups(stream):
        name = group["name"].decode()
        behind = await redis.xrange(stream, f"({group['last-delivered-id'].decode()}", "+")
        retries = await redis.zcard(keys.retry_schedule(0, name))
        out[name] = int(group["pending"]) + len(behind) + int(retries)
    return out


async def settle(redis: Redis, keys: Keys, timeout_s: float, groups: tuple[str, ...] = GROUPS) -> dict[str, int]:
    """Wait until every group has finished the whole log; return what is left (all zero when settled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = await backlog(redis, keys)
        if set(groups) <= set(left) and not any(left.values()):
            return left
        if time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


async def deliveries(redis: Redis, keys: Keys) -> dict[str, int]:
    """Entry id -> how many times the `tally` consumer was handed it."""
    raw = await redis.hgetall(f"{keys.prefix}:fault:tally")
    return {k.decode(): int(v) for k, v in raw.items()}


def audit_entries(stack: Stack) -> collections.Counter[str]:
    """Entry id -> lines in the audit log, after checking its hash chain end to end."""
    report = verify(stack.audit_path)
    assert report.ok, f"the audit log's chain is broken: {report.broken}"
    counts: collections.Counter[str] = collections.Counter()
    for path in log_files(stack.audit_path):
        for line in path.read_bytes().splitlines():
            counts[json.loads(line)["entry"]] += 1
    return counts


async def lifecycle_sample(stack: Stack, entry_ids: list[str], size: int = 25) -> dict[str, set[str]]:
    """GET /v1/events/{id} for a sample of entries: entry id -> the states its groups report."""
    sample = random.Random(7).sample(entry_ids, min(size, len(entry_ids)))
    out: dict[str, set[str]] = {}
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.operator(), timeout=10) as client:
        for entry_id in sample:
            resp = await client.get(f"/v1/events/{entry_id}")
            assert resp.status_code == 200, resp.text
            out[entry_id] = {f"{d['group']}:{d['state']}" for d in resp.json()["deliveries"]}
    return out


async def metric(stack: Stack, name: str, labels: str = "") -> float:
    """One sample of the web process's /metrics (0 when absent)."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        resp = await client.get("/metrics", headers={"Authorization": "Bearer fault-suite-metrics-token"})
    assert resp.status_code == 200, resp.text
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in resp.text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class Verdict:
    """Everything the suite asserts after a run, gathered once so a failing run still files its row."""

    log: LogCheck
    left: dict[str, int]  # per group: pending + not delivered + scheduled for retry
    unprocessed: list[str]  # acknowledged entries `tally` never saw
    redelivered: list[str]  # entries `tally` saw more than once (at-least-once)
    audit_missing: list[str]  # acknowledged entries not in the audit log
    audit_doubled: list[str]  # entries written to the audit log more than once
    dead_letters: int

    @property
    def unfinished(self) -> int:
        return sum(self.left.values()) + len(self.unprocessed)

    @property
    def lost(self) -> int:
        return len(self.log.lost) + len(self.unprocessed)

    def duplicated(self) -> str:
        return f"{len(self.log.doubled)} in log, {len(self.audit_doubled)} in audit, " \
               f"{len(self.redelivered)} redelivered"

    def assert_sound(self, dead_letters: int = 0) -> None:
        assert not self.log.lost, f"{len(self.log.lost)} acknowledged events are not in the log: {self.log.lost[:10]}"
        assert not self.log.doubled, f"appended twice: {self.log.doubled[:10]}"
        assert not self.log.wrong_entry, f"logged under another entry id: {self.log.wrong_entry[:10]}"
        assert not any(self.left.values()), f"groups did not finish: {self.left}"
        assert not self.unprocessed, f"never delivered: {self.unprocessed[:10]}"
        assert not self.audit_missing, f"missing from the audit log: {self.audit_missing[:10]}"
        assert not self.audit_doubled, f"twice in the audit log: {self.audit_doubled[:10]}"
        assert self.dead_letters == dead_letters, f"{self.dead_letters} dead letters, expected {dead_letters}"


async def verdict(stack: Stack, redis: Redis, acked: dict[str, str], settle_s: float = 30.0,
                  groups: tuple[str, ...] = GROUPS) -> Verdict:
    log = await check_log(redis, stack.keys, acked)
    left = await settle(redis, stack.keys, settle_s, groups)
    seen = await deliveries(redis, stack.keys)
    audited = audit_entries(stack) if "audit" in groups else collections.Counter()
    entries = set(acked.values())
    return Verdict(
        log=log, left=left,
        unprocessed=sorted(e for e in entries if "tally" in groups and seen.get(e, 0) < 1),
        redelivered=sorted(e for e, n in seen.items() if n > 1),
        audit_missing=sorted(e for e in entries if "audit" in groups and audited[e] < 1),
        audit_doubled=sorted(e for e, n in audited.items() if n > 1),
        dead_letters=int(await redis.xlen(stack.keys.dead_letters(0))),
    )


async def pending_of(redis: Redis, keys: Keys, group: str, consumer: str) -> set[str]:
    """The entries one consumer holds in a group's pending list."""
    rows = await redis.xpending_range(keys.stream(0), group, "-", "+", 100_000, consumername=consumer)
    return {row["message_id"].decode() for row in rows}
