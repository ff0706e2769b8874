"""Warm pools: sandboxes started ahead of time, each used for exactly one run, none left behind.

Real runs: the real CLI in the hardened Docker sandbox, against the scripted model.
"""

from __future__ import annotations

import time

import pytest
from support import log_lines

from fsrlm import RLM
from fsrlm.errors import FsrlmError
from fsrlm.executors.base import LABEL_ORCHESTRATOR
from fsrlm.executors.docker.hardening import ACTIVE_CPU_SHARES, STANDBY_CPU_SHARES
from fsrlm.executors.liveness import orchestrator_id
from fsrlm.testing.plans import bash_plan, count_label_plan
from fsrlm.warm import WarmPool

pytestmark = pytest.mark.docker

QUESTION = "How many lines contain ERROR?"


def _ours(client) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_ORCHESTRATOR}={orchestrator_id()}"})


def _wait_ready(rlm: RLM, n: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while rlm._warm is None or rlm._warm.pool.ready < n:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.1)


def test_each_warm_sandbox_serves_exactly_one_run(docker_image, scripted, make_config, docker_client, tmp_path):
    text, expected = log_lines(600)
    scripted.plan = count_label_plan(chunk_size=4000)
    rlm = RLM(make_config({"type": "docker", "warm": 2}, preserve_workspace=False))
    with rlm:
        for i in range(3):
            if i:
                _wait_ready(rlm, 1)
            result = rlm.invoke(text, question=QUESTION)
            assert result.success and result.answer == str(expected), result.errors
        pool = rlm._warm.pool
        assert pool.taken == 3  # every run took a slot: none started cold
        assert pool.made >= 3
    # one container per run, each gone after its run; the slots no run took are gone after close
    assert _ours(docker_client) == []
    assert not list((tmp_path / "runs").iterdir())  # successful runs removed, unused slot folders too


def test_a_run_with_another_system_prompt_runs_cold_and_the_pool_follows(docker_image, scripted, make_config):
    text, expected = log_lines(300)
    scripted.plan = count_label_plan(chunk_size=4000)
    with RLM(make_config({"type": "docker", "warm": 1})) as rlm:
        first = rlm.invoke(text, question=QUESTION)
        _wait_ready(rlm, 1)
        other = rlm.invoke(text, question=QUESTION, system="Be terse.")  # the ready slot was started without it
        pool = rlm._warm.pool
        assert (first.success, other.success) == (True, True), other.errors
        assert pool.taken == 2 and pool.system == "Be terse."  # waited for a slot of the new kind
        roots = [r for r in scripted.requests_of("root") if "Be terse." in str(r.body.get("system"))]
        assert roots  # the run got its own system prompt, not the stale slot's


def test_the_time_limit_counts_from_the_run_not_from_the_slot(docker_image, scripted, make_config):
    text, expected = log_lines(300)
    scripted.plan = count_label_plan(chunk_size=4000)
    with RLM(make_config({"type": "docker", "warm": 1}, timeout_seconds=8)) as rlm:
        rlm.invoke(text, question=QUESTION)
        _wait_ready(rlm, 1)
        time.sleep(10)  # longer than timeout_seconds: the waiting slot must not have been killed
        result = rlm.invoke(text, question=QUESTION)
    assert result.success, result.errors
    assert rlm._warm.pool.taken == 2


def test_warm_containers_are_hardened_like_cold_ones(docker_image, scripted, make_config, docker_client):
    """The settings of a waiting slot's container equal a cold run's, but for its name, labels and run."""
    with RLM(make_config({"type": "docker", "warm": 1})) as rlm:
        rlm.invoke("some input", question="q")  # starts the pool
        _wait_ready(rlm, 1)
        [warm] = _ours(docker_client)
        hc = warm.attrs["HostConfig"]
        assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True and hc["CapDrop"] == ["ALL"]
        assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["Init"] is True and not hc["Privileged"]
        writable = [m for m in warm.attrs["Mounts"] if m["RW"]]
        assert [m["Destination"] for m in writable] == ["/workspace"]
        env = dict(e.split("=", 1) for e in warm.attrs["Config"]["Env"])
        assert not [k for k in env if k.startswith("AWS_")] and "FSRLM_UPSTREAM_API_KEY" not in env
        assert env["ANTHROPIC_API_KEY"] == env["FSRLM_BROKER_TOKEN"]  # the run token, never a key


def test_a_pool_needs_the_docker_executor(make_config):
    with pytest.raises(FsrlmError, match="needs the docker executor"):
        WarmPool(make_config("local"), 1)


# What a standby container's cgroup says, under cgroup v1 (cpu.shares) or v2 (cpu.weight).
_CPU_WEIGHT = ("f=/sys/fs/cgroup/cpu/cpu.shares; [ -e $f ] || f=/sys/fs/cgroup/cpu.weight; "
               "for i in $(seq 300); do case $(cat $f) in 1024|100) break;; esac; sleep 0.1; done; "
               "mkdir -p output && cat $f > output/answer.md")


def test_a_waiting_slot_yields_the_cpu_until_a_run_takes_it(docker_image, scripted, make_config, docker_client):
    """Started ahead of time at the lowest CPU weight (the run under way keeps the CPU); a run's own
    sandbox gets the usual weight back. The limits are the same throughout."""
    scripted.plan = bash_plan(_CPU_WEIGHT)
    with RLM(make_config({"type": "docker", "warm": 1})) as rlm:
        rlm.invoke("input", question="q")  # starts the pool
        _wait_ready(rlm, 1)
        [waiting] = _ours(docker_client)
        hc = waiting.attrs["HostConfig"]
        assert hc["CpuShares"] == STANDBY_CPU_SHARES and hc["NanoCpus"] == 1_000_000_000
        assert (hc["Memory"], hc["PidsLimit"]) == (2 * 1024**3, 256)  # every limit as configured
        result = rlm.invoke("input", question="q")
    assert result.success, result.errors
    assert result.answer in (str(ACTIVE_CPU_SHARES), "100")  # what the run's own cgroup said (v1 / v2)


def test_the_pool_refills_after_a_run_while_a_slot_is_still_ready(docker_image, scripted, make_config):
    """Nothing is started beside a run while another slot waits; a pool that ran dry refills at once."""
    text, expected = log_lines(300)
    scripted.plan = count_label_plan(chunk_size=4000)
    # (ready, starting) as the run starts and as its script runs: with a slot left, nothing starts
    # during the run; with none, one starts at once (and may be ready by the time the script runs).
    for size, at_start, at_script in ((2, (1, 0), {(1, 0)}), (1, (0, 1), {(0, 1), (1, 0)})):
        seen: dict[str, tuple[int, int]] = {}

        def watch(event, seen=seen) -> None:
            if event.kind in ("run_started", "script_started"):
                seen[event.kind] = (rlm._warm.pool.ready, rlm._warm.pool.filling)

        with RLM(make_config({"type": "docker", "warm": size})) as rlm:
            rlm.invoke(text, question=QUESTION)
            _wait_settled(rlm, size)
            result = rlm.invoke(text, question=QUESTION, on_event=watch)
            assert result.success and result.answer == str(expected), result.errors
            assert seen["run_started"] == at_start and seen["script_started"] in at_script, (size, seen)
            _wait_settled(rlm, size)  # and full again after the run
            assert rlm._warm.pool.running == 0


def test_a_burst_that_empties_the_pool_refills_it_a_few_at_a_time(docker_image, scripted, make_config):
    """Runs that take every slot at once: the pool refills one sandbox per core at a time, not all at once."""
    import asyncio

    scripted.plan = bash_plan("mkdir -p output && echo hi > output/answer.md")
    starting: list[int] = []

    def watch(event) -> None:
        starting.append(rlm._warm.pool.filling)

    with RLM(make_config({"type": "docker", "warm": 4})) as rlm:
        rlm.invoke("warm-up", question="q")
        _wait_settled(rlm, 4)
        rlm._warm.pool.max_filling = 2  # one per core on this 2-core machine; the same on any machine

        async def burst():
            return await asyncio.gather(*(rlm.ainvoke(f"input {i}", question="q", on_event=watch) for i in range(4)))

        results = asyncio.run(burst())
        assert all(r.success for r in results), [r.errors for r in results]
        pool = rlm._warm.pool
        assert pool.taken == 5 and max(starting) <= 2, starting
        _wait_settled(rlm, 4)


def _wait_settled(rlm: RLM, n: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while rlm._warm.pool.ready < n or rlm._warm.pool.filling:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.1)
