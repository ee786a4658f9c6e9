"""tests/integration/test_dashboard_diagnostics.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_dashboard_diagnostics import *  # noqa: F403
