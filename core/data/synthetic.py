"""Built-in synthetic data sources: ``synthetic[:train=N,val=N,test=N,seed=N]``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import DataError, suggest

SYNTHETIC = "synthetic"
SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
"""Index offsets of the synthetic splits: the same (seed, index) never lands in two splits."""


def parse_synthetic(source: str | None, defaults: Mapping[str, int]) -> dict[str, int] | None:
    """``None``/``synthetic``/``synthetic:train=400,val=100`` → options; any other source → None."""
    if source is None:
        return dict(defaults)
    if source != SYNTHETIC and not source.startswith(SYNTHETIC + ":"):
        return None
    options = dict(defaults)
    rest = source[len(SYNTHETIC) + 1 :]
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in defaults:
            raise DataError(f"synthetic data option {part!r} is not one of {', '.join(f'{k}=N' for k in defaults)}"
                            + (suggest(key, defaults) if key else ""))
        try:
            options[key] = int(value)
        except ValueError:
            raise DataError(f"synthetic data option {key!r} needs an integer, got {value!r}") from None
        if options[key] < 0 or (key != "seed" and options[key] > 1_000_000):
            raise DataError(f"synthetic data option {key}={value} is out of range")
    return options


def synthetic_splits(make: Callable[[int, int], Any], *, train: int, val: int, test: int) -> tuple[Any, Any, Any]:
    """(train, val, test) datasets from ``make(offset, count)``; a split of 0 images is None."""
    counts = {"train": train, "val": val, "test": test}
    train_set, val_set, test_set = (make(SPLIT_OFFSETS[name], n) if n else None for name, n in counts.items())
    return train_set, val_set, test_set
