"""tests/integration/test_live.py against a 3-primary cluster with 16 partitions: the tests that do
not assume one partition's cursor format."""

from tests.integration.test_live import (  # noqa: F401 - collected here
    hub,
    test_a_cursor_resumes_exactly_after_the_last_entry_seen,
    test_a_slow_subscriber_drops_its_oldest_and_then_reads_the_gap_from_the_log,
    test_an_invalid_cursor_starts_from_now,
    test_every_subscriber_gets_every_new_entry_in_order,
    test_several_partitions_are_merged_and_resumed_per_partition,
    test_the_reader_sleeps_while_nobody_watches,
)
