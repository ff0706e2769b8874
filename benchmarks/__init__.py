"""Benchmarks for fsRLM: the OOLONG runner and scorer, and the performance tables.

Installed as ``fsrlm.benchmarks`` (the repository folder ``benchmarks/``); nothing in the
rest of fsRLM imports it. Each module is a command: ``fsrlm bench perf``, ``fsrlm bench oolong``, ...
"""
