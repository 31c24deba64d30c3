"""Fixtures shared by the integration tests (exported from their helper modules)."""
import pytest

# veth_pair is a fixture: imported here so pytest finds it, never named in this file
from tests.integration.netns import make_veth_pair, veth_pair  # noqa: F401  # pylint: disable=unused-import


@pytest.fixture(scope="module")
def pair():
    """One veth pair across two network namespaces for a whole test file (needs root)."""
    with make_veth_pair() as p:
        yield p
