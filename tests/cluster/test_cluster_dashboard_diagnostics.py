"""tests/integration/test_dashboard_diagnostics.py against a 3-primary cluster with 16 partitions: type
counts (stats), the trace of an event's attempts and retention held back, on the overview and consumers
pages. (The error tracker runs on the cluster in test_cluster_observability, whose traced event also
reads its group back; the errors page's own test takes 3 s of retries.)"""

from tests.integration.test_dashboard_diagnostics import (  # noqa: F401 - collected here
    admin,
    cheap_hashing,
    pytestmark,
    run,
    test_retention_held_back_by_a_slow_group_shows_on_the_overview_and_consumers_pages,
    test_the_event_page_shows_the_trace_with_each_attempt_s_span,
    test_type_counts_list_every_type_with_its_newest_minute,
)
