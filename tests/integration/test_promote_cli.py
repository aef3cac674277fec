"""``sketchpipe promote``: by hand, roll back, and clear errors that change nothing."""

import pytest

from flows.cli import main
from pipeline import registry, tracking


def _args(settings, tmp_path, *extra):
    config = tmp_path / "c.yaml"
    config.write_text(f"registered_model_name: {settings.registered_model_name}\n")
    return ["promote", "--config", str(config), "--tracking-uri", settings.resolved_tracking_uri, *extra]


def test_unknown_version_and_empty_history_fail_in_one_line_and_change_nothing(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    client = tracking.client_for(settings.resolved_tracking_uri)
    before = registry.alias_version(client, settings.registered_model_name, "champion")
    for extra in (["--version", "99"], ["--rollback"]):
        with pytest.raises(SystemExit) as exit_info:
            main(_args(settings, tmp_path, *extra))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("sketchpipe: error:")
        assert registry.alias_version(client, settings.registered_model_name, "champion") == before


def test_promote_by_hand_prints_the_new_champion(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    main(_args(settings, tmp_path, "--version", "1"))
    assert capsys.readouterr().out.strip().endswith("@champion -> version 1")
    client = tracking.client_for(settings.resolved_tracking_uri)
    assert registry.alias_version(client, settings.registered_model_name, "champion") == "1"
