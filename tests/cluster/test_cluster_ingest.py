"""tests/integration/test_ingest.py against a 3-primary cluster with 16 partitions."""

from tests.integration.test_ingest import *  # noqa: F403
