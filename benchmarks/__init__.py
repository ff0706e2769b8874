"""Benchmarks for fsRLM: OOLONG and OOLONG-Pairs, and the performance tables.

Installed as ``fsrlm.benchmarks`` (the repository folder ``benchmarks/``); nothing in the
rest of fsRLM imports it. Each command module is ``fsrlm bench <name>``:

- ``oolong`` (the RLM over rows; ``--paper`` hands over to ``paper_run``), ``compare``
  (the root model alone), ``report``, ``pairs`` (``oolong_pairs``), ``synth``
  (``oolong_synth_gen``), ``scripted-oolong``, ``perf``, ``remote``;
- the parts they share: ``oolong_data`` (rows), ``oolong_lengths`` (oolong-real token
  counts), ``oolong_scoring`` (the authors' rules), ``harness`` (the one loop that runs
  rows, through ``fsrlm batch``'s fan-out), ``row_task`` (one row's attempt, on this machine
  or a Ray node), ``sweep`` (the fleet flags, ``--ray`` included, and a command's parts on one
  fleet), ``records`` (a row's record), ``results``, ``summary``, ``tables``, ``paper`` (the
  paper's figures), ``models``.
"""
