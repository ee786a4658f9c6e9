"""tests/integration/test_audit.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_audit import *  # noqa: F403
