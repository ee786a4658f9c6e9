"""tests/integration/test_notify.py against a 3-primary cluster with 16 partitions: the tests that touch
Redis (deliveries, the per-partition "already sent" sets, dead letters, subscription edits under
WATCH); the HTTP-only ones (redirects, timeouts, the SSRF guard, validation) say nothing new here."""

from tests.integration.test_notify import (  # noqa: F401 - collected here
    api,
    pytestmark,
    receiver,
    test_a_500_is_retried_and_the_subscription_that_succeeded_is_not_sent_again,
    test_each_event_reaches_each_matching_subscription_once_signed,
    test_the_guard_refuses_loopback_unless_allowed_and_dead_letters_at_once,
    test_webhooks_api_crud,
    webhooks,
    wh_settings,
)
