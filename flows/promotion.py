"""The ``promote_model`` flow: move the ``champion`` alias by hand, or roll it back."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from prefect import flow

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
    if rollback:
        return registry.rollback_champion(client, name)
    if version is None:
        raise ValueError("give a version to promote or ask for a rollback")
    try:
        registry.set_champion(client, name, str(version))
    except MlflowException as exc:
        raise ValueError(f"model {name!r} has no version {version}") from exc
    return str(version)
