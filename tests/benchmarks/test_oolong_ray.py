"""``fsrlm bench oolong`` and ``fsrlm bench compare`` with ``--ray`` on a real Ray cluster.

A head (which schedules only: it advertises no sandbox) and two worker nodes of two sandboxes
each, every node its own ``ray start --block`` process tree on its own loopback address
(127.0.0.2-4; nothing outside 127.0.0.0/8). Generated (synthetic) rows, the scripted model on
loopback, the real Claude Code CLI and broker, the real ``fsrlm`` command line.

The executor is ``local``: these tests are about the fan-out (the same answers and scores as
the same sweep run here, every row recorded once, a row of a killed node tried again on the
other); the docker executor on a Ray cluster (the sandbox image shipped to the nodes, its
containers swept) is what ``tests/batch/test_cluster.py`` covers with the same machinery.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsrlm.benchmarks.oolong_pairs import pairs_rows
from fsrlm.benchmarks.oolong_synth_gen import generate_rows
from fsrlm.benchmarks.paper_run import PART_FILES
from fsrlm.benchmarks.scripted_oolong import oolong_plan, oolong_responder
from support import FAKE_UPSTREAM_KEY, node_leftovers, ray_test_cluster
from test_oolong_runner import records, write_fsrlm_toml, write_rows
from test_paper_run import fsrlm_executable, slice_rows

from fsrlm.testing.plans import FinalStep, Plan, ToolStep, first_user_text
from fsrlm.testing.ray_cluster import LocalRayCluster
from fsrlm.testing.scripted_model import ScriptedModelServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

_STARTED = re.compile(r"^started (\S+) (\S+) on (\S+)$")
ROWS = 12


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRayCluster, Path]]:
    """One cluster for the sweeps compared with their local twins (its nodes' temp dir beside it).

    Started before the per-test isolated environment applies, so the user's credentials and
    FSRLM_* settings are dropped here too: the nodes get only what a sweep forwards.
    """
    node_tmp = tmp_path_factory.mktemp("nodetmp")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("FSRLM_", "ANTHROPIC_", "AWS_", "CLAUDE_")):
                patch.delenv(name)
        with ray_test_cluster(node_tmp, head={"fsrlm_sandbox": 0}) as cluster:
            yield cluster, node_tmp


@pytest.fixture
def cluster(node_tmp: Path) -> Iterator[LocalRayCluster]:
    """A cluster of its own, for the test that kills one of its workers."""
    with ray_test_cluster(node_tmp, head={"fsrlm_sandbox": 0}) as cluster:
        yield cluster


def _bench(command: str, folder: Path, data: Path, scripted: ScriptedModelServer, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``fsrlm bench COMMAND`` with a config of its own in ``folder`` (its own cache and run folders)."""
    folder.mkdir(exist_ok=True)
    config = write_fsrlm_toml(folder, scripted)
    if command == "paper":
        argv = ["oolong", "--paper", "--out-dir", str(folder / "paper"), "--max-output-tokens", "8192",
                "--executor", "local", "--limit", "2"]
    elif command == "compare":  # the baseline runs no sandbox
        argv = ["compare", "--out", str(folder / "results.jsonl"), "--max-output-tokens", "8192"]
    else:
        argv = ["oolong", "--out", str(folder / "results.jsonl"), "--executor", "local"]
    return subprocess.run(
        [fsrlm_executable(), "bench", *argv, "--data", str(data), "--fsrlm-config", str(config), "--json", *extra],
        capture_output=True, text=True, timeout=400, check=False, env=env, stdin=subprocess.DEVNULL,
    )


def _result_files(command: str, folder: Path) -> list[Path]:
    if command == "paper":
        return [folder / "paper" / name for name in PART_FILES.values()]
    return [folder / "results.jsonl"]


def _nodes_of(stderr: str) -> dict[str, str]:
    """Row id -> the node it (last) started on, from the progress lines."""
    return {m.group(2): m.group(3) for m in map(_STARTED.match, stderr.splitlines()) if m}


def _answers(path: Path) -> dict[Any, tuple[Any, float, bool]]:
    return {(r["dataset"], r["id"]): (r["answer"], r["score"], r["success"]) for r in records(path)}


@pytest.mark.parametrize("command", ["oolong", "compare", "paper"])
def test_a_sweep_on_the_cluster_scores_as_the_same_sweep_here(command: str, tmp_path: Path,
                                                               scripted: ScriptedModelServer, shared) -> None:
    cluster, node_tmp = shared
    scripted.plan = oolong_plan()
    scripted.responder = oolong_responder
    if command == "paper":  # 2 rows of each slice, RLM and alone: four results files
        rows = slice_rows(2)
    else:  # OOLONG rows, and OOLONG-Pairs rows over the first window
        rows = generate_rows(ROWS, 2048, seed=31)
        rows += pairs_rows(rows[0])[:2]
    data = write_rows(tmp_path / "rows.jsonl", rows)

    here = _bench(command, tmp_path / "here", data, scripted, "--concurrency", "4")
    assert here.returncode == 0, here.stderr
    before = len(scripted.requests)
    there = _bench(command, tmp_path / "ray", data, scripted, "--ray", cluster.address,
                   env={**os.environ, **cluster.driver_env})
    assert there.returncode == 0, there.stderr
    assert len(scripted.requests) > before  # its own cache: the cluster's sweep asked the model itself

    ran: set[str] = set()
    for local_file, ray_file in zip(_result_files(command, tmp_path / "here"), _result_files(command, tmp_path / "ray"),
                                    strict=True):
        ids = [str(r["id"]) for r in records(ray_file)]
        assert sorted(ids) == sorted(str(r["id"]) for r in records(local_file)) and len(set(ids)) == len(ids)
        assert _answers(ray_file) == _answers(local_file)  # the same answers and scores
        assert all(score == 1.0 for _, score, _ in _answers(ray_file).values())
        assert [sorted(r) for r in records(ray_file)] == [sorted(r) for r in records(local_file)]  # same format
        ran |= set(ids)
    if command != "paper":
        assert len(ran) == len(rows) and {r["split"] for r in records(ray_file)} == {"synth", "pairs"}
    # stdout is the report alone (Ray's own notices go to stderr).
    assert json.loads(there.stdout).keys() == json.loads(here.stdout).keys()

    # The rows ran on the workers, never on the head (which advertises no sandbox); a sweep of more
    # rows than one worker holds ran on both.
    starts = [m.groups() for m in map(_STARTED.match, there.stderr.splitlines()) if m]
    assert {row_id for _, row_id, _ in starts} == ran, there.stderr[-2000:]
    nodes = {node for _, _, node in starts}
    workers = {w.ip for w in cluster.workers}
    assert nodes == workers if command != "paper" else nodes <= workers, there.stderr[-2000:]
    assert f"connected to the Ray cluster at {cluster.address}: 4 sandbox slot(s)" in there.stderr
    assert there.stderr.count("connected to the Ray cluster") == 1  # --paper: one fleet for its four parts

    # Every node's broker held the key (it reached the upstream); it came in the runtime environment.
    assert {r.headers.get("x-api-key") for r in scripted.requests} == {FAKE_UPSTREAM_KEY}
    # Nothing left on the nodes: no broker socket, no job or baseline folder, no local-run record.
    assert node_leftovers(node_tmp) == []


class PausingPlan:
    """The scripted OOLONG agent, which sleeps after its script ran when its row's question is ``question``."""

    def __init__(self, question: str, pause_seconds: float = 8.0) -> None:
        self.question = question
        self.pause_seconds = pause_seconds
        self.paused = threading.Event()
        solving = oolong_plan()
        self.plan = Plan([solving.steps[0], solving.steps[1], self._pause, *solving.steps[2:]], name="pausing")

    def _pause(self, body: dict) -> ToolStep | FinalStep:
        if self.question not in first_user_text(body):
            return ToolStep("Bash", {"command": "true", "description": "nothing to wait for"})
        self.paused.set()
        return ToolStep("Bash", {"command": f"sleep {self.pause_seconds:g}", "description": "pause"})


def test_a_sweep_survives_a_worker_killed_mid_sweep(tmp_path: Path, scripted: ScriptedModelServer,
                                                   cluster: LocalRayCluster, node_tmp: Path) -> None:
    rows = generate_rows(ROWS, 2048, seed=37)
    questions = [r["question"] for r in rows]
    target = next(r for r in rows[4:] if questions.count(r["question"]) == 1)  # a question asked of one row only
    pausing = PausingPlan(target["question"])
    scripted.plan = pausing.plan
    scripted.responder = oolong_responder
    data = write_rows(tmp_path / "rows.jsonl", rows)
    folder = tmp_path / "sweep"
    folder.mkdir()
    config = write_fsrlm_toml(folder, scripted)
    out = folder / "results.jsonl"
    proc = subprocess.Popen(
        [fsrlm_executable(), "bench", "oolong", "--data", str(data), "--fsrlm-config", str(config), "--out", str(out),
         "--executor", "local", "--ray", cluster.address, "--json"],
        env={**os.environ, **cluster.driver_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert pausing.paused.wait(240), "".join(stderr_lines[-30:])
        row_id = str(target["id"])
        deadline = time.monotonic() + 10
        while row_id not in _nodes_of("".join(stderr_lines)) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim_ip = _nodes_of("".join(stderr_lines))[row_id]
        victim = next(w for w in cluster.workers if w.ip == victim_ip)
        survivor = next(w for w in cluster.workers if w is not victim)
        cluster.kill(victim)  # the worker dies while the row sleeps after its subcalls

        stdout = proc.stdout.read()  # stderr is the reader's alone
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    reader.join(10)
    stderr = "".join(stderr_lines)
    assert proc.returncode == 0, stderr[-3000:]

    results = records(out)
    assert sorted(str(r["id"]) for r in results) == sorted(str(r["id"]) for r in rows)  # every row exactly once
    assert all(r["score"] == 1.0 and r["success"] for r in results), [r for r in results if r["score"] != 1.0]
    assert json.loads(stdout)["overall"]["runs"] == ROWS

    # The paused row was tried again on the survivor; its subcalls came from the shared cache.
    retried = [line for line in stderr.splitlines() if f" {row_id}: score" in line]
    assert retried and retried[0].endswith(f"on {survivor.ip} (attempt 2; {victim.ip} then {survivor.ip})"), stderr[-3000:]
    again = next(r for r in results if str(r["id"]) == row_id)
    assert again["subcalls"] == 0 and again["cached"] >= 1
    assert "was lost while running the job" in stderr and "trying again" in stderr
    assert re.search(r"row\(s\) in .* on the cluster \([1-9]\d* retried\)", stderr)

    # Nothing left: the sweep at the end reaped what the killed worker's runs left on the machine.
    assert node_leftovers(node_tmp) == []
