"""The `adapters` command line."""
