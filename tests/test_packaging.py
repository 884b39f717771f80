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


def test_the_static_imports_editors_see_name_exactly_the_lazy_exports():
    """Issue 23.5: `import loradex` stays cheap (exports load on first use), and the TYPE_CHECKING block
    that lets editors see `loradex.load` names each export from its module, no more and no less."""
    import ast
    import sys

    import loradex

    tree = ast.parse(Path(loradex.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    static = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
              for alias in node.names}
    assert static == loradex._EXPORTS
    for name, module in static.items():
        assert getattr(loradex, name) is getattr(sys.modules[module], name), name
