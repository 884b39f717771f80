"""Shared fixtures: an isolated registry home, offline Hub settings, tiny backbones."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own LORADEX_HOME and HF_HOME, and runs in a scratch folder."""
    home = tmp_path / "loradex-home"
    monkeypatch.setenv("LORADEX_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def tiny_backbone():
    """The tiny-vit preset, loaded once per session (LoRA is attached to copies only)."""
    from loradex.core import plugins

    return plugins.resolve_backbone("tiny-vit").load("tiny-vit")
