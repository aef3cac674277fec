"""The docs site: its reference pages are generated from the code and name every command, flag and setting,
and the site builds with ``--strict`` (a broken link or a page left out of the nav fails)."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pages():
    spec = importlib.util.spec_from_file_location("reference_pages", ROOT / "docs" / "reference_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_page_has_every_setting_with_its_default_and_a_description():
    from pipeline.config import Settings

    page = _pages().settings_page()
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    for field in dataclasses.fields(Settings):
        row = rows[f"`{field.name}`"]
        assert row.split("|")[4].strip(), f"{field.name} has no description"
    assert "`--steps-per-epoch`" in rows["`steps_per_epoch`"] and "`50000`" in rows["`validation_sample`"]


def test_the_command_page_has_every_command_and_flag():
    import argparse

    from flows.cli import build_parser

    page = _pages().cli_page()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        section = page.split(f"## `sketchpipe {name}`")[1].split("\n## ")[0]
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)


def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"  # the docs extra, which make installs
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").exists()
