"""tests/integration/test_observability.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_observability import *  # noqa: F403
