"""Fixtures shared by the integration tests (exported from their helper modules)."""
from tests.integration.netns import veth_pair  # noqa: F401
