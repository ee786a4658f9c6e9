"""tests/integration/test_notify.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_notify import *  # noqa: F403
