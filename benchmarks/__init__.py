"""Benchmarks for fsRLM: the OOLONG runner and scorer, and the performance tables.

Nothing here is imported by ``fsrlm`` itself; run the modules with ``python -m``.
"""
