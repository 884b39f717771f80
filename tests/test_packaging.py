"""Packaging: every package folder is listed in pyproject.toml, so wheels are complete."""

from __future__ import annotations

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {folder: package for package, folder in config["package-dir"].items()}
    found = set()
    for folder, package in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            owner = max((f for f in mapping if init.parent.is_relative_to(ROOT / f)), key=len)
            if owner != folder:  # a sub-folder mapped to a package of its own (core/public is `loradex`)
                continue
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    assert found == set(config["packages"])


def test_console_script_points_at_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["adapters"] == "loradex.registry.cli:main"
    assert project["requires-python"] == ">=3.10"
