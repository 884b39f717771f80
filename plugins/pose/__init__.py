"""Built-in pose / keypoint task plugin (being written)."""
