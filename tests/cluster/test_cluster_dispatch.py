"""tests/integration/test_dispatch.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_dispatch import *  # noqa: F403
