"""Flow tests run against the session's one Prefect test server (temporary database)."""

import pytest


@pytest.fixture(autouse=True)
def _on_prefect_server(prefect_server):
    """Every flow test runs against the session's Prefect test server."""
