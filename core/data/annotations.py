"""Helpers for datasets of "images plus one annotation file each" and ``classes.txt``: what a plugin
author would otherwise write again (the segmentation task uses both)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError


def read_class_names(path: Path) -> list[str]:
    """Class names from ``path`` (``classes.txt``: one per line, the first is index 0; blank lines skipped).

    A DataError names the file when it cannot be read, is not UTF-8, lists no names or lists one twice.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if not names or twice:
        raise DataError(f"{path}: needs one class name per line, each once"
                        + (f" ({twice[0]!r} is listed twice)" if twice else " (it lists none)"))
    return names


def paired_files(images: Sequence[Path], folder: Path, *, suffixes: Sequence[str] = (".png",)) -> list[tuple[Path, Path]]:
    """Each image with its annotation file in ``folder``: the same stem, the first of ``suffixes`` found.

    A DataError names the first image that has none (and where it was looked for).
    """
    pairs = []
    for image in images:
        found = next((folder / f"{Path(image).stem}{s}" for s in suffixes if (folder / f"{Path(image).stem}{s}").is_file()),
                     None)
        if found is None:
            raise DataError(f"{image}: no annotation {Path(image).stem}{'|'.join(suffixes)} in {folder}")
        pairs.append((Path(image), found))
    return pairs
