"""tests/integration/test_retention.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_retention import *  # noqa: F403
