"""``fsrlm bench batch``: many runs through ``fsrlm batch``, locally and on Ray clusters of this machine.

The same jobs (the scripted count job: write a script, run it, finish; the scripted
model answers every root turn after ``--root-ms`` and every subcall after
``--sub-ms``, so a run mostly waits, as with a real model) run four ways, in one run:

  local -j S        S jobs at once on this machine (no Ray)
  ray 1 node        a one-node cluster advertising S sandboxes
  local -j 3S       3S at once on this machine
  ray 3 nodes       head + two workers, S sandboxes each (one loopback address per node)

and the table gives jobs per minute, the 3-node / 1-node ratio, and the per-job
overhead of Ray scheduling against local concurrency at the same number of slots:
(batch wall on Ray - batch wall locally) x slots / jobs. Cluster start-up is not
counted; connecting the driver and the workers' first start-up are.

Usage: fsrlm bench batch [--jobs 24] [--slots 2] [--executor local|docker] [--root-ms 250] [--sub-ms 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fsrlm.testing.plans import count_label_plan
from fsrlm.testing.scripted_model import ScriptedModelServer

Row = dict[str, Any]
FSRLM = str(Path(sys.executable).with_name("fsrlm"))


def _jobs(folder: Path, count: int) -> Path:
    path = folder / "jobs.jsonl"
    with path.open("w") as f:
        for i in range(count):
            text = "".join(f"job {i} line {n} {'ERROR' if n % (2 + i % 5) == 0 else 'INFO'} {'x' * 40}\n"
                           for n in range(200))
            (folder / f"in-{i}.log").write_text(text)
            f.write(json.dumps({"id": f"job-{i}", "input": f"in-{i}.log",
                                "question": "How many lines contain ERROR?"}) + "\n")
    return path


def _batch(folder: Path, env: dict[str, str], name: str, args: list[str]) -> dict[str, Any]:
    out = folder / f"{name}.jsonl"
    proc = subprocess.run([FSRLM, "batch", str(folder / "jobs.jsonl"), "--out", str(out), "--json", *args],
                          env=env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: fsrlm batch failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run(jobs: int, slots: int, executor: str, root_ms: float, sub_ms: float) -> list[Row]:
    from fsrlm.testing.ray_cluster import LocalRayCluster

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fsrlm-bench-batch-") as tmp, \
            ScriptedModelServer(count_label_plan("ERROR", chunk_size=4000), root_latency_ms=root_ms,
                                subcall_latency_ms=sub_ms) as model:
        folder = Path(tmp)
        _jobs(folder, jobs)
        env = {**os.environ, "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": model.url,
               "FSRLM_UPSTREAM_API_KEY": "bench-key", "FSRLM_ROOT_MODEL": "scripted-root",
               "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_CACHE_RESPONSES": "false",
               "FSRLM_WORKSPACE_DIR": str(folder / "runs"), "FSRLM_EXECUTOR": executor}

        def add(name: str, summary: dict[str, Any], slots_used: int) -> None:
            rows.append({"setup": name, "slots": slots_used, "jobs": summary["finished"],
                         "wall_s": summary["wall_seconds"], "jobs_per_min": summary["jobs_per_minute"],
                         "nodes": len(summary["nodes"])})

        add(f"local -j {slots}", _batch(folder, env, "local-1", ["-j", str(slots)]), slots)
        with LocalRayCluster(workers=[], head={"fsrlm_sandbox": slots}, num_cpus=slots) as one:
            add("ray 1 node", _batch(folder, {**env, **one.driver_env}, "ray-1", ["--ray", one.address]), slots)
        add(f"local -j {3 * slots}", _batch(folder, env, "local-3", ["-j", str(3 * slots)]), 3 * slots)
        with LocalRayCluster(workers=[{"fsrlm_sandbox": slots}] * 2, head={"fsrlm_sandbox": slots},
                             num_cpus=slots) as three:
            add("ray 3 nodes", _batch(folder, {**env, **three.driver_env}, "ray-3", ["--ray", three.address]),
                3 * slots)
    by = {row["setup"]: row for row in rows}
    one_node, three_nodes = by["ray 1 node"], by["ray 3 nodes"]
    rows.append({"setup": "ratio: ray 3 nodes / ray 1 node (jobs per minute)",
                 "jobs_per_min": round(three_nodes["jobs_per_min"] / one_node["jobs_per_min"], 2)})
    for local, ray_row in ((by[f"local -j {slots}"], one_node), (by[f"local -j {3 * slots}"], three_nodes)):
        overhead = (ray_row["wall_s"] - local["wall_s"]) * ray_row["slots"] / ray_row["jobs"]
        rows.append({"setup": f"Ray overhead per job at {ray_row['slots']} slots (vs {local['setup']})",
                     "wall_s": round(overhead, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fsrlm bench batch", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--slots", type=int, default=2, help="sandboxes per node (and local concurrency)")
    parser.add_argument("--executor", default="local", choices=["local", "docker"])
    parser.add_argument("--root-ms", type=float, default=250.0, help="scripted latency of each root turn")
    parser.add_argument("--sub-ms", type=float, default=100.0, help="scripted latency of each subcall")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.jobs, args.slots, args.executor, args.root_ms, args.sub_ms)
    if args.json:
        print(json.dumps(rows))
        return 0
    from fsrlm.benchmarks.perf import print_table

    print_table(f"fsrlm batch: {args.jobs} jobs, executor {args.executor}, root turn {args.root_ms:g} ms, "
                f"subcall {args.sub_ms:g} ms", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
