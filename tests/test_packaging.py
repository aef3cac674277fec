"""The package list in pyproject.toml covers the source tree, so a wheel holds every module."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_folder_of_the_source_tree_is_a_listed_package():
    # setuptools installs only the packages named: an editable install finds a forgotten subpackage
    # through its folder, a wheel (pip install ., a published release) leaves it out
    config = _setuptools()
    found = set()
    for name, folder in config["package-dir"].items():
        top = ROOT / folder
        for path in [top, *(p for p in top.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            if any(path.glob("*.py")) or any(path.glob("*.txt")):
                found.add(".".join([name, *path.relative_to(top).parts]))
    assert "pipeline.stages" in found and "pipeline.data" in found  # the walk sees subpackages
    assert sorted(config["packages"]) == sorted(found)


def test_the_package_data_is_in_a_listed_package():
    config = _setuptools()
    for package, patterns in config["package-data"].items():
        top = ROOT / config["package-dir"][package]
        for pattern in patterns:
            files = list(top.glob(pattern))
            assert files, f"{package}: {pattern} matches nothing"
            for file in files:
                assert ".".join([package, *file.parent.relative_to(top).parts]) in config["packages"]
