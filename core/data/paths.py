"""Paths a dataset names: folders that must exist, and files that must stay inside the data folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError


def require_path(source: str) -> Path:
    """``source`` as an existing file or folder, or a DataError naming it."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data file or folder does not exist")
    return path


def require_folder(source: str) -> Path:
    """``source`` as an existing folder, or a DataError naming it."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data folder does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: expected a data folder, found a file")
    return path


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links resolved, lies within ``root``."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except OSError:
        return False


def find_in(name: str, folders: Sequence[Path], *, root: Path, where: str) -> Path | None:
    """The first ``folder/name`` that is a file, or None; a name that escapes ``root`` is a DataError.

    Annotation files name images by relative paths: an absolute path, or one that leads out of
    the data folder (``../../etc/passwd``, or a link pointing elsewhere), is refused rather than
    read.
    """
    if not name or Path(name).is_absolute() or Path(name).drive:
        raise DataError(f"{where}: file name {name!r} must be a path relative to the data folder")
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            if not inside(candidate, root):
                raise DataError(f"{where}: file name {name!r} leads outside the data folder {root}")
            return candidate
    return None
