"""tests/integration/test_analytics.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_analytics import *  # noqa: F403
