"""The examples in docs/python-api.md run, in order, against a registry like the README's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    """The ```python code blocks of a markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def readme_shelf(isolated_home, tmp_path):
    """What `adapters train classification|detection|pose` would store, with random weights, and photos/."""
    from loradex.core import plugins
    from loradex.plugins.shapes import scene_image, single_shape_image
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    with Registry.open(isolated_home) as registry:
        for task, size in (("classification", 64), ("detection", 96), ("pose", 64)):
            registry.put(random_adapter(tmp_path / "build" / task, task, backbone=backbone, image_size=size),
                         name=task)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        single_shape_image(3, i, 64, i).save(photos / f"shape{i}.png")
    scene_image(4, 0, 96)[0].save(photos / "scene.jpg")
    return tmp_path


def test_python_api_examples_run_in_order(readme_shelf, capsys):
    blocks = python_blocks(DOCS / "python-api.md")
    assert len(blocks) >= 5
    namespace: dict = {}
    for index, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/python-api.md block {index + 1}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - name the block that broke
            raise AssertionError(f"block {index + 1} of docs/python-api.md failed: {exc!r}\n{code}") from exc
    out = capsys.readouterr().out
    assert "Did you mean 'classification'?" in out
    assert (readme_shelf / "all-three.png").is_file() and (readme_shelf / "shape0-drawn.png").is_file()


def test_the_author_api_list_names_every_export():
    """Issue 24.4: python-api.md's list missed a dozen public names; now a test keeps it complete."""
    import loradex

    text = (Path(__file__).resolve().parent.parent / "docs" / "python-api.md").read_text()
    section = text[text.index("## For plugin authors"):]
    missing = [name for name in loradex._EXPORTS if f"`{name}`" not in section]
    assert missing == []
