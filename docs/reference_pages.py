"""Reference pages generated from the code at build time (an MkDocs hook), so that they cannot drift:
every ``sketchpipe`` command with its flags (from the argument parser) and every setting with its
default and the comment beside it (from :class:`pipeline.config.Settings`)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import tokenize


def cli_page() -> str:
    """Return the command-line reference as Markdown: a section per command, a table of its arguments."""
    from flows.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    out = [
        "# Command-line reference",
        "",
        "Generated from `sketchpipe`'s argument parser when the docs are built. A wrong value stops with one",
        "line naming the flag (exit code 2). Settings flags override the settings file and the environment",
        "(see [Settings](settings.md)).",
        "",
    ]
    for name, command in commands.choices.items():
        out += [f"## `sketchpipe {name}`", "", helps.get(name) or "", ""]
        out += ["| argument | value | what it does |", "| --- | --- | --- |"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
            choices = ",".join(action.choices) if action.choices else ""
            value = "" if action.nargs == 0 else (action.metavar or choices)
            required = " (required)" if action.required and action.option_strings else ""
            text = (action.help or "").replace("|", "\\|")
            out.append(f"| {flag}{required} | {value} | {text} |")
        out.append("")
    return "\n".join(out)


def _field_comments(cls) -> dict[str, str]:
    """Return each field of a dataclass's source with its comment: the one at the end of its line, else
    the comment lines just above it."""
    source = inspect.getsource(cls)
    comments: dict[str, str] = {}
    above: list[str] = []
    lines = source.splitlines()
    trailing = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0] - 1
            if lines[row].strip().startswith("#"):
                continue
            trailing[row] = token.string.lstrip("# ").strip()
    for row, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("# ").strip()
            if _is_heading(text) and not above:
                comments[f"## {row}"] = text  # a section of the settings
            else:
                above.append(text)
            continue
        name = stripped.split(":", 1)[0]
        if ":" in stripped and name.isidentifier() and line.startswith("    ") and not line.startswith("     "):
            comments[name] = trailing.get(row) or " ".join(above)
        if stripped and not stripped.startswith("#"):
            above = []
    return comments


def _is_heading(text: str) -> bool:
    """Return whether a comment line names a group of settings ("Data", "Tracking and registry")."""
    return bool(text) and text[0].isupper() and len(text.split()) <= 4 and not any(c in text for c in ":(.,;")


def _field_rows(cls) -> dict[str, int]:
    """Return the source line of each field of a dataclass."""
    rows = {}
    for row, line in enumerate(inspect.getsource(cls).splitlines()):
        name = line.strip().split(":", 1)[0]
        if line.startswith("    ") and not line.startswith("     ") and ":" in line and name.isidentifier():
            rows.setdefault(name, row)
    return rows


def settings_page() -> str:
    """Return the settings reference as Markdown: every setting, its flag or variable, default and meaning."""
    from flows.cli import _SETTING_FLAGS
    from pipeline.config import Settings

    comments = _field_comments(Settings)
    out = [
        "# Settings reference",
        "",
        "Generated from `pipeline.config.Settings` when the docs are built. Every setting is read, in",
        "increasing priority, from its default, the settings file (`sketchpipe.yaml` in the working folder,",
        "or `--config FILE`), the environment variable `SKETCHPIPE_<NAME>` and the command-line flag where",
        "there is one. An invalid value stops with one line naming the setting or flag (exit code 2).",
        "",
        "| setting | flag | default | what it sets |",
        "| --- | --- | --- | --- |",
    ]
    sections = iter(sorted((int(k.split()[1]), v) for k, v in comments.items() if k.startswith("## ")))
    section = next(sections, None)
    rows_of = _field_rows(Settings)
    for field in dataclasses.fields(Settings):
        while section is not None and section[0] < rows_of[field.name]:
            out.append(f"| **{section[1]}** | | | |")
            section = next(sections, None)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = f"`--{field.name.replace('_', '-')}`" if field.name in _SETTING_FLAGS else ""
        shown = "" if default is None else f"`{default!r}`".replace("|", "\\|")
        text = comments.get(field.name, "").replace("|", "\\|")
        out.append(f"| `{field.name}` | {flag} | {shown} | {text} |")
    out += ["", "Per-architecture hyperparameters go under `models:`; see [Configuration](../guides/configuration.md)."]
    return "\n".join(out) + "\n"


def on_files(files, config):
    """MkDocs hook: add the generated pages to the site."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    files.append(File.generated(config, "reference/settings.md", content=settings_page()))
    return files
