"""The key layout: one prefix, one hash tag per partition, stable partition choice."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from app.keys import Keys

_TAG = re.compile(r"\{([^}]*)\}")


def per_partition_keys(keys: Keys, partition: int) -> Iterator[tuple[str, str]]:
    """(method name, key) for every Keys method that builds a key inside a partition.

    Found by signature, so that keys added later are checked too."""
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        params = list(inspect.signature(method).parameters)
        if name.startswith("_") or not params or params[0] != "partition" or name == "base":
            continue
        yield name, method(partition, *(f"arg{i}" for i in range(len(params) - 1)))


def hash_tag(key: str) -> str:
    match = _TAG.search(key)
    assert match is not None and match.group(1), f"{key!r} has no hash tag"
    return match.group(1)


def test_one_partition_puts_the_log_at_the_bare_prefix_tag() -> None:
    keys = Keys("eventflow", 1)
    assert keys.stream(0) == "{eventflow}:events"
    assert keys.base(0) == "{eventflow}:"


def test_n_partitions_number_their_tags() -> None:
    keys = Keys("ef", 3)
    assert [keys.stream(p) for p in range(3)] == ["{ef:0}:events", "{ef:1}:events", "{ef:2}:events"]


@pytest.mark.parametrize("partitions", [1, 4])
def test_every_per_partition_key_shares_the_partition_hash_tag_and_slot(partitions: int) -> None:
    keys = Keys("eventflow", partitions)
    for partition in range(partitions):
        found = dict(per_partition_keys(keys, partition))
        assert {"stream", "type_index", "source_index", "event_id", "indexed"} <= set(found)
        tag = hash_tag(keys.stream(partition))
        for name, key in found.items():
            assert key.startswith(keys.base(partition)), name
            assert hash_tag(key) == tag, name
            assert key_slot(key.encode()) == key_slot(keys.stream(partition).encode()), name


def test_keys_with_user_text_keep_the_partition_tag() -> None:
    # A type or source containing braces must not introduce a tag of its own (the first {...} wins).
    keys = Keys("eventflow", 2)
    key = keys.type_index(1, "{weird}.type")
    assert hash_tag(key) == "eventflow:1"
    assert key_slot(key.encode()) == key_slot(keys.stream(1).encode())


def test_partitions_use_distinct_tags() -> None:
    keys = Keys("eventflow", 8)
    assert len({hash_tag(keys.stream(p)) for p in range(8)}) == 8


def test_the_prefix_separates_deployments() -> None:
    a, b = Keys("a", 1), Keys("b", 1)
    assert a.stream(0) != b.stream(0)
    assert a.producers != b.producers
    assert a.producers.startswith("a:")
    assert a.producer_keys.startswith("a:")
    assert a.producer_stats("billing").startswith("a:")


def test_one_partition_maps_every_key_to_partition_zero() -> None:
    keys = Keys("eventflow", 1)
    assert {keys.partition_of(f"source\nsubject-{i}") for i in range(100)} == {0}


def test_partition_of_is_in_range_and_spreads_keys() -> None:
    keys = Keys("eventflow", 4)
    counts = [0] * 4
    for i in range(1000):
        counts[keys.partition_of(f"billing\norder-{i}")] += 1
    assert all(150 < c < 350 for c in counts), counts


def test_partition_of_is_the_same_in_another_process() -> None:
    # Python's str hash is salted per process; the partition must not be (web workers, consumers and
    # a restarted process all have to agree where an event lives).
    names = [f"billing\norder-{i}" for i in range(50)]
    here = [Keys("eventflow", 7).partition_of(n) for n in names]
    code = (
        "import sys, json; from app.keys import Keys; "
        "print(json.dumps([Keys('eventflow', 7).partition_of(n) for n in json.load(sys.stdin)]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(names), capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[2],
        )
        assert json.loads(out.stdout) == here


@pytest.mark.parametrize(("partition_key", "crc32"), [
    ("customer-7", 42760520), ("billing\norder/42", 1953152885), ("shop\n", 178499099),
])
def test_a_partition_is_the_crc32_of_its_key_modulo_the_count(partition_key: str, crc32: int) -> None:
    # docs/scaling.md promises CRC-32 modulo the partition count: a direct writer may compute it, and a
    # change would move every key to another partition (a migration, not a refactor).
    for partitions in (2, 7, 16, 64):
        assert Keys("eventflow", partitions).partition_of(partition_key) == crc32 % partitions
