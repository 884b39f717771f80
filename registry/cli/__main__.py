"""``python -m loradex.registry.cli`` (and ``accelerate launch -m loradex.registry.cli``)."""

from . import main

main()
