"""loradex.registry — the local adapter store, loading onto a shared base, and the `adapters` CLI."""

from loradex.registry.store.registry import AdapterSummary, FileEntry, Registry, VersionRecord, default_home

__all__ = ["AdapterSummary", "FileEntry", "Registry", "VersionRecord", "default_home"]
