"""loradex.registry — the local adapter store, merge/export, Hub push/pull and the `adapters` CLI."""
