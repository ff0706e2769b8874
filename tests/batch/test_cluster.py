"""``fsrlm batch --ray`` on a real Ray cluster: a head and two worker nodes, each its own process tree
with its own loopback address (127.0.0.2-4; no address outside 127.0.0.0/8), the docker executor.

One worker is killed mid-batch, while one of its jobs has made all its subcalls: that job is
tried again on the other worker, its subcalls come from the shared cache, and every job is
answered exactly once. Nothing is left: no Ray process, no container, no broker socket, no
job folder, nothing in /tmp/ray.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import read_results, write_jobs
from support import FAKE_UPSTREAM_KEY, node_leftovers, ray_test_cluster, run_objects

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(600)]
_STARTED = re.compile(r"started (\S+) on (\S+)")


@pytest.fixture
def cluster(node_tmp: Path, docker_image: str):
    with ray_test_cluster(node_tmp) as c:
        yield c


def test_a_batch_survives_a_worker_killed_mid_batch(tmp_path: Path, batch_plan, batch_env, scripted, cluster,
                                                   node_tmp, popen_batch) -> None:
    ray_tmp = Path("/tmp/ray")
    ray_tmp_before = sorted(ray_tmp.iterdir()) if ray_tmp.exists() else None
    answers = write_jobs(tmp_path, 32, pause={4})
    out = tmp_path / "results.jsonl"
    env = {**batch_env, **cluster.driver_env}
    proc = popen_batch(["jobs.jsonl", "--out", str(out), "--ray", cluster.address, "-e", "docker", "--json"],
                       env, tmp_path)
    where: dict[str, str] = {}
    stderr_lines: list[str] = []

    def follow() -> None:
        for line in proc.stderr:
            stderr_lines.append(line)
            match = _STARTED.search(line)
            if match:
                where.setdefault(match.group(1), match.group(2))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert batch_plan.on_pause.wait(240), "".join(stderr_lines[-30:])
    paused = batch_plan.paused[0]
    deadline = time.monotonic() + 10
    while paused not in where and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = next(w for w in cluster.workers if w.ip == where[paused])
    survivor = next(w for w in cluster.workers if w is not victim)
    cluster.kill(victim)  # the worker dies while `paused` sleeps after its subcalls

    stdout = proc.stdout.read()
    proc.wait(300)
    reader.join(10)
    assert proc.returncode == 0, "".join(stderr_lines[-40:])
    summary = json.loads(stdout)
    results = read_results(out)
    assert sorted(r["id"] for r in results) == sorted(answers)  # every job exactly once
    assert {r["id"]: r["answer"] for r in results} == answers
    assert summary["finished"] == 32 and summary["retried"] >= 1
    assert set(summary["nodes"]) <= {victim.ip, survivor.ip} and summary["nodes"].get(survivor.ip)

    retried = {r["id"]: r for r in results if r["attempts"] > 1}
    assert paused in retried
    again = retried[paused]
    assert again["nodes"] == [victim.ip, survivor.ip] and again["node"] == survivor.ip
    # The retry paid for no subcall: the first attempt's answers came from the shared cache_dir.
    assert again["metrics"]["subcalls"] == 0 and again["metrics"]["subcalls_cached"] >= 1
    subcall_prompts = [json.dumps(r.body.get("messages")) for r in scripted.requests_of("subcall")
                       if paused in json.dumps(r.body.get("messages"))]
    assert subcall_prompts and len(subcall_prompts) == len(set(subcall_prompts))

    # The broker of every node held the key (it reached the upstream); it came in the runtime environment.
    assert {r.headers.get("x-api-key") for r in scripted.requests} == {FAKE_UPSTREAM_KEY}

    # Nothing left: the sweep at the end removed the killed worker's containers and sockets.
    import docker

    client = docker.from_env()
    try:
        for folder in (tmp_path / "runs").iterdir():
            assert run_objects(client, folder.name) == [], folder.name
    finally:
        client.close()
    assert node_leftovers(node_tmp) == []
    assert (sorted(ray_tmp.iterdir()) if ray_tmp.exists() else None) == ray_tmp_before
