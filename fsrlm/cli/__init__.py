"""The ``fsrlm`` command line (one module per command group)."""
