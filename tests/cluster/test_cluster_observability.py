"""tests/integration/test_observability.py against a 3-primary cluster with 16 partitions: the gauges
read at scrape time (streams, groups, heartbeats, memory of every primary) and the error tracker; the
tests of granian workers, exporters and log lines do not depend on the server."""

from tests.integration.test_observability import (  # noqa: F401 - collected here
    log_lines,
    pytestmark,
    test_metrics_need_the_token_and_count_ingest_by_producer_reason_and_route,
    test_one_event_traced_through_two_consumers_with_metrics_errors_and_logs,
    test_the_internal_port_serves_metrics_without_a_token_and_reads_redis_on_the_loop,
    test_worker_heartbeats_show_up_as_live_workers_per_group,
)
