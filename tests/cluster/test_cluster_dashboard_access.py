"""tests/integration/test_dashboard_access.py against a 3-primary cluster with 16 partitions: operators,
sessions and the login limiter (metadata keys of many slots); the CSRF, header and template checks do
not depend on the server."""

from tests.integration.test_dashboard_access import (  # noqa: F401 - collected here
    cheap_hashing,
    operators,
    pytestmark,
    test_concurrent_wrong_passwords_get_no_more_tries_than_the_limit,
    test_deleting_an_operator_or_changing_a_password_ends_their_sessions,
    test_failed_logins_are_limited_per_client_address,
    test_login_issues_a_new_session_and_ends_the_one_the_browser_had,
    test_logout_ends_the_session,
    test_pages_need_a_session_and_send_you_back_where_you_were,
    test_right_passwords_do_not_use_up_the_failed_login_limit,
    test_sessions_expire_when_idle_and_after_their_maximum_age,
)
