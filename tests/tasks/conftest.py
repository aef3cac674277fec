"""Task tests run against the session's one Prefect test server.

``promote`` takes a Prefect global concurrency slot: without a server to hold it, a test run of this
folder alone would wait for one forever.
"""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _on_prefect_server(prefect_server):
    """Every task test runs against the session's Prefect test server."""
