"""Every error loradex raises on purpose.

The CLI turns a :class:`LoradexError` into one line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LoradexError(Exception):
    """Base of every error that reports a user-facing fault (bad input, missing thing)."""

    exit_code = 1


class ConfigError(LoradexError):
    """A setting, option or configuration file is invalid."""

    exit_code = 2


class SpecError(LoradexError):
    """An AdapterSpec (``loradex.json``) is malformed or inconsistent."""


class DataError(LoradexError):
    """A dataset is missing, empty, unreadable or violates its schema."""


class PluginError(LoradexError):
    """A plugin failed to load, registered a bad object or clashes with another."""


class UnknownNameError(LoradexError):
    """A task, backbone or other registered name does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, hint: str = "") -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1)
        hint = hint or (f" Did you mean {close[0]!r}?" if close else "")
        choices = ", ".join(known) if known else "none"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {choices}.")
        self.kind, self.name, self.known = kind, name, known


class HubError(LoradexError):
    """A Hugging Face Hub operation failed (not found, not allowed, unreachable, a hash mismatch)."""


class HubNotFoundError(HubError):
    """The Hub has no such repository, revision or file (or does not show it to this token)."""


class TrainingDivergedError(LoradexError):
    """The loss became NaN or infinite: nothing is stored."""


class BackboneError(LoradexError):
    """A backbone cannot be loaded or does not have the expected shape."""


class FingerprintMismatchError(LoradexError):
    """An adapter was trained on a different base than the one it is loaded on."""


class ArtifactError(LoradexError):
    """An adapter folder on disk is incomplete, corrupt or not in loradex/PEFT format."""


class RegistryError(LoradexError):
    """Base of the registry's errors (store, versions, aliases)."""


class InvalidNameError(RegistryError):
    """An adapter name, version or alias is not allowed."""


class NotFoundError(RegistryError):
    """An adapter, version or alias does not exist in the registry."""


class IntegrityError(RegistryError):
    """A stored file does not match the hash the registry recorded for it."""


class IndexDamagedError(RegistryError):
    """The registry's index (index.db) cannot be read; ``adapters verify --repair`` rebuilds it."""


class ReadOnlyRegistryError(RegistryError):
    """A change was asked of a registry that can only be read (a read-only folder or file system)."""


class ServeError(LoradexError):
    """Base of the errors of ``adapters serve`` and its client."""


class RefusedError(ServeError):
    """A request asked for something this server is set not to do (a Hub ref without --allow-hub)."""


class QueueFullError(ServeError):
    """The server's queue cannot take a request's images now; try again shortly."""


class RequestError(ServeError):
    """A request ``adapters serve`` refuses, with the HTTP status (and headers) to answer it with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class ServerError(ServeError):
    """A loradex server refused a request or could not be reached; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def suggest(name: str, known: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none): a library error, quoted in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
