"""Names, aliases and references (``name``, ``name@v3``, ``name@prod``) and their rules.

An adapter name and an alias match ``[a-z0-9][a-z0-9._-]{0,63}`` and never contain ``..``:
nothing a user types can address a path outside the registry root. An alias may not look
like a version (``v3``, ``3``) and may not be ``latest``, which the registry keeps itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from loradex.core.errors import InvalidNameError

MAX_NAME = 64
MAX_VERSION = 10**9
"""Version numbers above this are refused as typos (SQLite's integers end at 2**63 - 1)."""
LATEST = "latest"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"v?(\d+)")


def _describe(value: str) -> str:
    shown = value if len(value) <= 40 else value[:37] + "..."
    return repr(shown)


def validate_name(name: object, *, kind: str = "adapter name") -> str:
    """Return ``name`` if it is a valid adapter name, else raise InvalidNameError saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{kind} is empty; use lowercase letters, digits, '.', '_' or '-'")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"{kind} {_describe(name)} is {len(name)} characters long; the limit is {MAX_NAME}")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidNameError(f"{kind} {_describe(name)} contains control characters")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidNameError(f"{kind} {_describe(name)} may not contain '/', '\\' or '..'")
    if "@" in name:
        raise InvalidNameError(f"{kind} {_describe(name)} may not contain '@' (it separates name and version)")
    if not _NAME.fullmatch(name):
        hint = " (names are lowercase)" if _NAME.fullmatch(name.lower()) else ""
        raise InvalidNameError(
            f"{kind} {_describe(name)} is not allowed{hint}: start with a lowercase letter or digit, "
            f"then use lowercase letters, digits, '.', '_' or '-' (at most {MAX_NAME} characters)"
        )
    return name


def parse_version(text: str) -> int | None:
    """``"v3"`` or ``"3"`` → 3; anything else → None."""
    match = _VERSION.fullmatch(text)
    return int(match.group(1)) if match else None


def validate_alias(alias: object) -> str:
    """Return ``alias`` if it may be set by a user: a valid name, not a version, not ``latest``."""
    validate_name(alias, kind="alias")
    assert isinstance(alias, str)
    if parse_version(alias) is not None:
        raise InvalidNameError(f"alias {alias!r} looks like a version number and would shadow one; pick another")
    if alias == LATEST:
        raise InvalidNameError("alias 'latest' is kept by the registry: it always means the newest version")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a name and at most one of a version number or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def is_bare(self) -> bool:
        """True for ``name`` alone (which means the latest version)."""
        return self.version is None and self.alias is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@v{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(ref: object) -> Ref:
    """Parse ``name``, ``name@v3``, ``name@3``, ``name@latest`` or ``name@alias``."""
    if not isinstance(ref, str) or not ref:
        raise InvalidNameError("adapter reference is empty; use NAME, NAME@vN or NAME@ALIAS")
    name, sep, selector = ref.partition("@")
    validate_name(name)
    if not sep:
        return Ref(name)
    if not selector:
        raise InvalidNameError(f"reference {ref!r} has nothing after '@'; use NAME@vN or NAME@ALIAS")
    version = parse_version(selector)
    if version is not None:
        if version < 1:
            raise InvalidNameError(f"reference {ref!r}: versions start at v1")
        if version > MAX_VERSION:
            raise InvalidNameError(f"reference {_describe(ref)}: version number {selector[:24]!r} is out of range")
        return Ref(name, version=version)
    if selector == LATEST:
        return Ref(name, alias=LATEST)
    validate_name(selector, kind="alias")
    return Ref(name, alias=selector)


def version_ref(name: str, version: int) -> str:
    """The canonical reference ``name@vN``."""
    return f"{name}@v{version}"


def slugify(text: str) -> str:
    """Turn a folder name into a valid adapter name (lowercase, other characters → ``-``)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower())
    slug = re.sub(r"\.{2,}", ".", slug).strip("-._")
    return slug[:MAX_NAME].rstrip("-._")
