"""tests/integration/test_groups_cli.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_groups_cli import *  # noqa: F403
