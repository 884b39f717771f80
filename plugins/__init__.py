"""Built-in task plugins and backbones; each registers through the public hooks."""
