"""tests/integration/test_partitions.py (seats, ordered consumers) against a 3-primary cluster: the
module's own settings fixture narrows the cluster's 16 partitions to 8."""

from tests.integration.test_partitions import *  # noqa: F403
