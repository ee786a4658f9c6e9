"""tests/integration/test_dashboard_pages.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_dashboard_pages import *  # noqa: F403
