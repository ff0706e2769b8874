"""The orchestrator label that lets ``fsrlm gc`` leave live runs alone."""

from __future__ import annotations

import subprocess
import sys
import time

from fsrlm.executors.base import LABEL_CREATED, LABEL_ORCHESTRATOR
from fsrlm.executors.docker.cleanup import _keep
from fsrlm.executors.liveness import orchestrator_alive, orchestrator_id


def test_this_process_is_alive() -> None:
    me = orchestrator_id()
    boot, pid, start = me.split("/")
    assert boot and int(pid) > 0 and int(start) > 0
    assert orchestrator_alive(me) is True


def test_a_finished_process_is_gone_and_a_reused_pid_is_not_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from fsrlm.executors.liveness import _BOOT_ID, _start_time

        label = f"{_BOOT_ID.read_text().strip()}/{child.pid}/{_start_time(child.pid)}"
        assert orchestrator_alive(label) is True
        assert orchestrator_alive(label.rsplit("/", 1)[0] + "/1") is False  # same pid, another start time
    finally:
        child.kill()
        child.wait()
    assert orchestrator_alive(label) is False


def test_unknown_when_it_cannot_be_told() -> None:
    assert orchestrator_alive("") is None
    assert orchestrator_alive("garbage") is None
    assert orchestrator_alive("another-boot-id/1/1") is None


def test_gc_rule() -> None:
    now = time.time()
    dead = orchestrator_id().rsplit("/", 2)[0] + "/999999999/1"

    def labels(orchestrator: str, age: float) -> dict[str, str]:
        return {LABEL_ORCHESTRATOR: orchestrator, LABEL_CREATED: str(int(now - age))}

    assert _keep(labels(orchestrator_id(), 10**6), 0.0, now)  # plain gc never kills a live run
    assert not _keep(labels(orchestrator_id(), 10**6), 3600, now)  # ... an explicit age still applies
    assert _keep(labels(orchestrator_id(), 10), 3600, now)
    assert not _keep(labels(dead, 10), 10**6, now)  # a crashed orchestrator's leftovers go at once
    assert _keep(labels("", 10), 3600, now) and not _keep(labels("", 7200), 3600, now)  # unknown: by age
    assert not _keep(labels(orchestrator_id(), 10), None, now)  # remove_run: always
