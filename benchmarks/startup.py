"""How fast the command line starts: the commands a user types most, and ``import fsrlm``.

Each figure is the median wall time of a fresh process (the interpreter's own start
included; its bare start is the first row, for comparison).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

Row = dict[str, Any]


def _fsrlm() -> list[str]:
    found = shutil.which("fsrlm")
    return [found] if found else [sys.executable, "-m", "fsrlm.cli.main"]


def _median_seconds(argv: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, timeout=120)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_startup(reps: int = 11) -> list[Row]:
    cases = [
        ("python3 -c pass (the floor)", [sys.executable, "-c", "pass"]),
        ("python3 -c 'import fsrlm'", [sys.executable, "-c", "import fsrlm"]),
        ("fsrlm --help", [*_fsrlm(), "--help"]),
        ("fsrlm gc --help", [*_fsrlm(), "gc", "--help"]),
        ("fsrlm view --help", [*_fsrlm(), "view", "--help"]),
        ("fsrlm gc, a whole run (lists local and docker leftovers)", [*_fsrlm(), "gc", "--json"]),
        ("python3 -c 'from fsrlm import RLM' (loads the Agent SDK)", [sys.executable, "-c", "from fsrlm import RLM"]),
    ]
    return [{"command": label, "median_s": round(_median_seconds(argv, reps), 3)} for label, argv in cases]
