"""Fixtures for the cluster tests: one real 3-primary Valkey cluster per session (the embedded server
binary in cluster mode), and the shared fixtures of tests/conftest.py pointed at it with 16 partitions.

The behaviour suites of tests/integration run here unchanged (each test_*.py of this folder imports
one of them), so one suite covers a single server and a cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.embedded import EmbeddedCluster
from app.settings import Settings

PARTITIONS = 16


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("valkey-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def settings(redis_cluster: EmbeddedCluster) -> Settings:
    """Overrides tests/conftest.py's: the cluster, 16 partitions, a prefix no other test uses."""
    return Settings(redis_url=redis_cluster.url, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=PARTITIONS,
                    redis_timeout_s=2.0)
