"""Which process started a run, and does it still run? ``fsrlm gc`` asks before removing anything.

Containers and volumes carry ``fsrlm.orchestrator=<boot id>/<pid>/<start time>``:
the boot id tells whether the label was made on this machine since its last
boot, and the start time (``/proc/<pid>/stat``) tells the orchestrator from a
later process that happens to reuse its pid.
"""

from __future__ import annotations

import os
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _start_time(pid: int) -> str:
    # Field 22 of /proc/<pid>/stat; split after the command name, which may hold spaces and ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def orchestrator_id() -> str:
    """This process, as a label value; "" where /proc is not available."""
    try:
        return f"{_BOOT_ID.read_text().strip()}/{os.getpid()}/{_start_time(os.getpid())}"
    except (OSError, IndexError):
        return ""


def orchestrator_alive(value: str) -> bool | None:
    """True: that orchestrator still runs; False: it is gone; None: cannot tell (another machine, no label)."""
    try:
        boot, pid, start = value.split("/")
        if boot != _BOOT_ID.read_text().strip():
            return None
        return _start_time(int(pid)) == start
    except FileNotFoundError:
        return False  # no such process any more
    except (OSError, ValueError, IndexError):
        return None
