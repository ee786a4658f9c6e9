"""The security tests reuse the fault suite's world (real web and worker processes on a Valkey of
their own) through its `make_stack` fixture, and the dashboard tests' cheap password hashing."""

from tests.fault.conftest import make_stack
from tests.integration.dashboard_helpers import cheap_hashing

__all__ = ["cheap_hashing", "make_stack"]
