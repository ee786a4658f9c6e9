"""tests/integration/test_queries.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_queries import *  # noqa: F403
