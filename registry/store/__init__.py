"""The registry's storage room: the SQLite index, content-addressed blobs, version manifests,
locks, names, weight checks, import checks, and the :class:`~loradex.registry.store.registry.Registry`
that ties them together (its consistency checks and repair live in :mod:`.fsck`)."""
