"""tests/integration/test_dashboard_access.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_dashboard_access import *  # noqa: F403
