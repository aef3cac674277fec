"""The ``promote_model`` flow: move the ``champion`` alias by hand, or roll it back."""

from __future__ import annotations

import contextlib

from mlflow.exceptions import MlflowException
from prefect import flow
from prefect.settings import PREFECT_API_URL

from pipeline import registry, tracking
from pipeline.config import load_settings


@flow(name="promote_model", log_prints=True)
def promote_model(
    version: str | None = None,
    rollback: bool = False,
    tracking_uri: str | None = None,
    config_file: str | None = None,
) -> str:
    """Make ``version`` the champion, or with ``rollback`` return to the previous champion; return the version.

    Raises:
        ValueError: an unknown version or model, or no earlier champion (nothing is changed).
    """
    settings = load_settings(config_file, overrides={"tracking_uri": tracking_uri})
    client = tracking.client_for(settings.resolved_tracking_uri)
    name = settings.registered_model_name
    if not rollback and version is None:
        raise ValueError("give a version to promote or ask for a rollback")
    with _registry_locks(settings.resolved_tracking_uri, name):  # the promotion gate's locks: one mover at a time
        if rollback:
            return registry.rollback_champion(client, name)
        try:
            registry.set_champion(client, name, str(version))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise  # the store failed: not an answer about the version
            raise ValueError(f"model {name!r} has no version {version}") from exc
        return str(version)


@contextlib.contextmanager
def _registry_locks(tracking_uri: str, name: str):
    """Hold the locks the promotion gate holds: the Prefect concurrency slot of the model when a
    Prefect server is configured (none is started for it), and the store's file lock."""
    with contextlib.ExitStack() as stack:
        if PREFECT_API_URL.value():
            from prefect.concurrency.sync import concurrency

            from tasks.registry import registry_lock

            stack.enter_context(concurrency(registry_lock(name), occupy=1, strict=True))
        stack.enter_context(registry.alias_lock(tracking_uri, name))
        yield
