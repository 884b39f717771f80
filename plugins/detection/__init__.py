"""Built-in object detection task plugin (being written)."""
