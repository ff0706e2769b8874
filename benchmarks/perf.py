"""``make bench``: fsRLM's performance tables, measured side by side in one run.

Everything talks to the scripted model on loopback at a fixed latency, so the
figures are the machinery's own cost, not a model's. Sections:

  broker   broker overhead per subcall vs calling the model directly; cache-hit throughput
  batch    llm_batch wall time for 100 and 1000 calls at several concurrencies vs the ideal
  chunking chunk_file throughput and peak memory for 1 MB, 100 MB and 1 GB inputs
  startup  how long `fsrlm --help`, `fsrlm gc`, `fsrlm view --help` and `import fsrlm` take
  runs     per-run overhead of each executor vs the bare CLI on the same script
  jobs     the reference jobs (30 chunks at 0 ms, 100 chunks at 200 ms; benchmarks/README.md) per executor
           (docker under runc and under gVisor when the engine has it: docker:runc, docker:gvisor)
  parallel N concurrent runs per executor: throughput and failures
  remote   remote-docker vs docker per run, and the workspace transfer rate (benchmarks/remote.py)

Executors: local, docker (``docker:runc``, ``docker:gvisor``), and ``docker-warm:runc`` /
``docker-warm:gvisor``: docker from a warm pool (``executor.warm``); each timed run starts once the
pool is full and starts nothing more, as a run finds it after a pause. The last table checks the
warm-start targets (benchmarks/README.md) against the figures of the same run. Progress goes to stderr.

Usage: fsrlm bench perf [--only broker,batch,...] [--executors local,docker:runc,docker:gvisor] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

from fsrlm.broker import Broker, BrokerSettings, RunLimits
from fsrlm.config import RLMConfig, UpstreamConfig
from fsrlm.rlm import RLM
from fsrlm.testing.plans import bash_plan, count_label_plan
from fsrlm.testing.scripted_model import ScriptedModelServer

# The in-sandbox tools (llm_client.py, chunking.py), wherever fsRLM is installed.
TOOLS = str(resources.files("fsrlm.tools.workspace"))
Row = dict[str, Any]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def broker_for(url: str, workspace: Path, *, cache: Path | None, concurrency: int = 64) -> Broker:
    limits = RunLimits(max_scripts=1000, max_subcalls_per_script=100_000, max_total_subcalls=1_000_000,
                       max_tokens_per_subcall=1000, max_budget_usd=None, max_depth=0)
    (workspace / "state").mkdir(parents=True, exist_ok=True)
    return Broker(BrokerSettings(
        run_id="bench", token="bench-token", workspace=workspace, submodel="scripted-sub", limits=limits,
        upstream=UpstreamConfig(type="compatible", base_url=url, max_retries=0), cache_dir=cache,
        subcall_concurrency=concurrency,
    ))


# -- broker ----------------------------------------------------------------------------


async def _time_requests(session: aiohttp.ClientSession, url: str, make_body, headers: dict, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        async with session.post(url, json=make_body(i), headers=headers) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
    return out


async def bench_broker(n: int) -> list[Row]:
    rows: list[Row] = []
    with ScriptedModelServer() as model, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        async with aiohttp.ClientSession() as session:
            direct = await _time_requests(
                session, model.url + "/v1/messages",
                lambda i: {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": f"ECHO: {i}"}]},
                {"x-api-key": "k"}, n)
            broker = broker_for(model.url, ws, cache=None)
            endpoint = await broker.start()
            port = await endpoint.open_tcp()
            try:
                brokered = await _time_requests(
                    session, f"http://127.0.0.1:{port}/fsrlm/v1/subcall",
                    lambda i: {"messages": [{"role": "user", "content": f"ECHO: {i}"}]},
                    {"x-api-key": "bench-token", "x-fsrlm-script": "bench.py"}, n)
            finally:
                await broker.stop()
            cached_broker = broker_for(model.url, ws, cache=ws / "cache")
            endpoint = await cached_broker.start()
            port = await endpoint.open_tcp()
            try:
                body = {"messages": [{"role": "user", "content": "ECHO: same"}]}
                hdr = {"x-api-key": "bench-token", "x-fsrlm-script": "bench.py"}
                await _time_requests(session, f"http://127.0.0.1:{port}/fsrlm/v1/subcall", lambda i: body, hdr, 1)
                t = time.perf_counter()
                hits = await _time_requests(session, f"http://127.0.0.1:{port}/fsrlm/v1/subcall",
                                            lambda i: body, hdr, n)
                hit_rate = n / (time.perf_counter() - t)
            finally:
                await cached_broker.stop()
    rows.append({"measure": "direct call to the model, p50 / p99 ms",
                 "value": f"{pct(direct, .5):.2f} / {pct(direct, .99):.2f}"})
    rows.append({"measure": "through the broker, p50 / p99 ms",
                 "value": f"{pct(brokered, .5):.2f} / {pct(brokered, .99):.2f}"})
    rows.append({"measure": "broker overhead per subcall, p50 ms (target < 3)",
                 "value": f"{pct(brokered, .5) - pct(direct, .5):.2f}"})
    rows.append({"measure": "cache hits, p50 ms / sequential hits per second",
                 "value": f"{pct(hits, .5):.2f} / {hit_rate:.0f}"})
    return rows


# -- llm_batch -----------------------------------------------------------------------

BATCH_SCRIPT = textwrap.dedent("""
    import sys, time
    from llm_client import llm_batch
    n = int(sys.argv[1])
    t = time.perf_counter()
    out = llm_batch([f"ECHO: {i} {sys.argv[2]}" for i in range(n)])
    assert out[5].endswith(sys.argv[2])
    print(time.perf_counter() - t)
""")


async def bench_batch(cases: list[tuple[int, int]], latency_ms: float) -> list[Row]:
    rows: list[Row] = []
    with ScriptedModelServer(subcall_latency_ms=latency_ms) as model, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "bench.py").write_text(BATCH_SCRIPT)
        for n, concurrency in cases:
            broker = broker_for(model.url, ws, cache=None, concurrency=concurrency)
            endpoint = await broker.start()
            port = await endpoint.open_tcp()
            env = {**os.environ, "PYTHONPATH": TOOLS, "FSRLM_BROKER_URL": f"http://127.0.0.1:{port}",
                   "FSRLM_BROKER_TOKEN": "bench-token", "FSRLM_WORKSPACE": str(ws),
                   "FSRLM_SUBCALL_CONCURRENCY": str(concurrency)}
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "bench.py", str(n), f"tag{n}x{concurrency}", cwd=ws, env=env,
                    stdout=asyncio.subprocess.PIPE)
                out, _ = await proc.communicate()
            finally:
                await broker.stop()
            wall = float(out.decode().strip().splitlines()[-1])
            ideal = math.ceil(n / concurrency) * latency_ms / 1000
            rows.append({"calls": n, "concurrency": concurrency, "wall_s": round(wall, 3),
                         "ideal_s": round(ideal, 3), "ratio": round(wall / ideal, 3)})
    return rows


# -- chunking ------------------------------------------------------------------------

CHUNK_SCRIPT = textwrap.dedent("""
    import sys, time, tracemalloc
    from chunking import chunk_file
    t = time.perf_counter(); n = 0
    for c in chunk_file(sys.argv[1], chunk_size=64000):
        n += 1
    dt = time.perf_counter() - t
    tracemalloc.start()  # a second pass, measured: peak Python heap while chunking
    for c in chunk_file(sys.argv[1], chunk_size=64000):
        pass
    print(dt, n, tracemalloc.get_traced_memory()[1])
""")


def bench_chunking(sizes_mb: list[int]) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "chunk.py"
        script.write_text(CHUNK_SCRIPT)
        line = b"2026-11-25T10:00:00Z svc-3 INFO request 12345 took 87 ms and said something long enough\n"
        for mb in sizes_mb:
            path = Path(tmp) / f"in-{mb}.log"
            block = line * (1024 * 1024 // len(line) + 1)
            with path.open("wb") as f:
                for _ in range(mb):
                    f.write(block[: 1024 * 1024])
            out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": TOOLS}, check=True).stdout.split()
            seconds, chunks, peak = float(out[0]), int(out[1]), int(out[2])
            rows.append({"input": f"{mb} MB", "chunks": chunks, "seconds": round(seconds, 3),
                         "MB_per_s": round(mb / seconds, 1), "peak_heap_MB": round(peak / 2**20, 2)})
            path.unlink()
    return rows


# -- whole runs ----------------------------------------------------------------------


def progress(message: str) -> None:
    """A line on stderr as the measurements go (a whole run takes many minutes)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


WARM = "docker-warm"


def _executor_table(executor: str, warm: int = 2) -> dict[str, Any]:
    """``local``, ``docker``, ``docker-warm``, ``docker:runc`` / ``docker:gvisor`` (executor.isolation) or
    ``docker@NAME`` (executor.runtime, e.g. a runsc registered with --platform=kvm) as an executor table."""
    if executor == WARM or executor.startswith(WARM + ":"):
        isolation = executor.partition(":")[2]
        return {"type": "docker", "warm": warm, **({"isolation": isolation} if isolation else {})}
    if "@" in executor:
        kind, runtime = executor.split("@", 1)
        return {"type": kind, "runtime": runtime}
    kind, _, isolation = executor.partition(":")
    return {"type": kind, "isolation": isolation} if isolation else {"type": kind}


def _config(executor: str, url: str, tmp: Path, *, warm: int = 2, **extra: Any) -> RLMConfig:
    return RLMConfig.model_validate({
        "upstream": {"type": "compatible", "base_url": url, "max_retries": 0},
        "executor": _executor_table(executor, warm), "cache_responses": False, "cache_dir": str(tmp / "cache"),
        "workspace_dir": str(tmp / "runs"), "root_model": "scripted-root", "submodel": "scripted-sub",
        "max_subcalls_per_script": 10_000, "max_total_subcalls": 100_000, "max_budget_usd": None,
        "subcall_concurrency": 16, **extra,
    })


def _bare_cli(url: str, tmp: Path) -> float:
    from fsrlm.executors.bundled_cli import bundled_cli

    ws = tmp / "bare"
    ws.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(ws), "CLAUDE_CONFIG_DIR": str(ws / ".agent"),
           "CLAUDE_CODE_TMPDIR": str(ws),  # the bare CLI's temp files go with the bench's temp folder
           "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "x", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    t = time.perf_counter()
    subprocess.run([str(bundled_cli()), "-p", "go", "--output-format", "stream-json", "--verbose",
                    "--model", "scripted-root", "--allowedTools", "Bash"], cwd=ws, env=env,
                   capture_output=True, check=True, timeout=120)
    return time.perf_counter() - t


def bench_runs(executors: list[str], reps: int) -> list[Row]:
    """The bare CLI and each executor, in ``reps`` interleaved rounds (the machine's drift over the
    minutes a section takes then falls on every executor alike)."""
    with ScriptedModelServer(bash_plan("mkdir -p output && echo hi > output/answer.md")) as model, \
            tempfile.TemporaryDirectory() as tmp, _opened(executors, model.url, Path(tmp)) as rlms:
        tmp_path = Path(tmp)
        _bare_cli(model.url, tmp_path)  # warm caches
        bare: list[float] = []
        times: dict[str, list[float]] = {executor: [] for executor in executors}
        for rlm in rlms.values():
            rlm.invoke("input", question="q")  # warm up (image, caches, the pool)
        for round_ in range(reps):
            progress(f"runs: round {round_ + 1} of {reps}")
            _all_ready(rlms)
            bare.append(_bare_cli(model.url, tmp_path))
            for executor, rlm in rlms.items():
                _all_ready(rlms)
                result = rlm.invoke("input", question="q")
                assert result.success, result.errors
                times[executor].append(result.metrics.wall_seconds)
    bare_s = statistics.median(bare)
    rows: list[Row] = [{"executor": "bare CLI (no fsRLM)", "median_s": round(bare_s, 3), "overhead_s": 0.0}]
    for executor, walls in times.items():
        median = statistics.median(walls)
        progress(f"runs: {executor} {median:.3f} s (median of {reps})")
        rows.append({"executor": executor, "median_s": round(median, 3), "overhead_s": round(median - bare_s, 3)})
    return rows


@contextlib.contextmanager
def _opened(executors: list[str], url: str, tmp: Path) -> Iterator[dict[str, RLM]]:
    """One RLM object per executor, all open at once (each warm one with its pool)."""
    with contextlib.ExitStack() as stack:
        yield {executor: stack.enter_context(RLM(_config(executor, url, tmp))) for executor in executors}


SETTLE_S = 1.0  # after a pool is full: the new sandboxes' CLIs finish the start-up work that follows initialize


def _all_ready(rlms: dict[str, RLM]) -> None:
    """Every warm pool full, starting nothing, and settled: no sandbox starts beside the run measured next,
    whichever executor's it is (a waiting sandbox's low CPU weight ranks it below other containers, not
    below the host's processes, such as the local executor's)."""
    pools = [rlm for rlm in rlms.values() if rlm._warm is not None]
    for rlm in pools:
        _pool_ready(rlm)
    if pools:
        time.sleep(SETTLE_S)


def _records(n: int) -> str:
    return "".join(f"record {i} user-{i % 17} {'ERROR' if i % 9 == 0 else 'OK'} {'payload ' * 3}\n" for i in range(n))


def bench_jobs(executors: list[str], reps: int = 3) -> list[Row]:
    """Each reference job per executor: the median of ``reps`` interleaved rounds after a warm-up run
    (``runs_s``: each)."""
    rows: list[Row] = []
    for records, chunks, latency in ((1200, 30, 0), (4000, 100, 200)):
        text = _records(records)
        chunk_size = math.ceil(len(text.encode()) / chunks) + 80
        with ScriptedModelServer(count_label_plan(chunk_size=chunk_size), subcall_latency_ms=latency) as model, \
                tempfile.TemporaryDirectory() as tmp, _opened(executors, model.url, Path(tmp)) as rlms:
            results: dict[str, list] = {executor: [] for executor in executors}
            for rlm in rlms.values():
                rlm.invoke(text, question="How many records are ERROR?")  # warm up
            for round_ in range(reps):
                progress(f"jobs: {records} records, round {round_ + 1} of {reps}")
                for executor, rlm in rlms.items():
                    _all_ready(rlms)
                    results[executor].append(rlm.invoke(text, question="How many records are ERROR?"))
        for executor, runs in results.items():
            walls = [r.metrics.wall_seconds for r in runs]
            ideal = math.ceil(runs[0].metrics.subcalls / 16) * latency / 1000
            progress(f"jobs: {records} records, {executor} {statistics.median(walls):.3f} s (median of {reps})")
            rows.append({"job": f"{records} records, {runs[0].metrics.subcalls} chunks, {latency} ms",
                         "executor": executor, "wall_s": statistics.median(walls),
                         "runs_s": " / ".join(f"{w:.2f}" for w in walls),
                         "ok": all(r.success and r.answer == str(text.count("ERROR")) for r in runs),
                         "ideal_subcall_waves_s": ideal})
    return rows


async def _parallel(rlm: RLM, n: int) -> tuple[float, int]:
    t = time.perf_counter()
    results = await asyncio.gather(*(rlm.ainvoke(f"input {i}", question="q") for i in range(n)),
                                   return_exceptions=True)
    failures = sum(1 for r in results if isinstance(r, BaseException) or not r.success)
    return time.perf_counter() - t, failures


def bench_parallel(executors: list[str], counts: list[int]) -> list[Row]:
    rows: list[Row] = []
    with ScriptedModelServer(bash_plan("mkdir -p output && echo hi > output/answer.md")) as model, tempfile.TemporaryDirectory() as tmp:
        for executor in executors:
            for n in counts:
                with RLM(_config(executor, model.url, Path(tmp), warm=n)) as rlm:
                    if executor.startswith(WARM):
                        rlm.invoke("warm-up", question="q")  # starts the pool
                        _pool_ready(rlm, n, seconds=300)
                    wall, failures = asyncio.run(_parallel(rlm, n))
                progress(f"parallel: {n} x {executor} {wall:.2f} s, {failures} failed")
                rows.append({"executor": executor, "concurrent_runs": n, "wall_s": round(wall, 2),
                             "runs_per_s": round(n / wall, 2), "failures": failures})
    return rows


def _pool_ready(rlm: RLM, n: int = 1, seconds: float = 120) -> None:
    """For docker-warm: wait until the pool holds ``n`` started sandboxes and starts no more (what a run
    finds after a pause: no sandbox starting beside it)."""
    if rlm._warm is None:
        return
    pool = rlm._warm.pool
    deadline = time.monotonic() + seconds
    while (pool.ready < n or pool.filling) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- output --------------------------------------------------------------------------


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}\n")
    if not rows:
        print("(nothing measured)")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |")
    print("| " + " | ".join("-" * widths[c] for c in cols) + " |")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) + " |")


SECTIONS = ("startup", "broker", "batch", "chunking", "runs", "jobs", "parallel", "remote")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fsrlm bench perf", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--executors", default=None,
                        help="default: local,docker:runc,docker:gvisor,docker-warm (docker when the engine is up, "
                             "gvisor when it has it); docker@RUNTIME names an engine runtime, e.g. docker@runsc-kvm")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no 1 GB input, no 1000-call batches")
    parser.add_argument("--json", action="store_true", help="print all tables as one JSON object")
    parser.add_argument("--remote-host", default=None,
                        help="Docker host for the remote section (default: a second dockerd on loopback, as root)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    executors = args.executors.split(",") if args.executors else _default_executors()
    quick = args.quick

    results: dict[str, list[Row]] = {}

    def section(title: str, rows: list[Row]) -> None:
        # Each table as soon as it is measured: a full run takes minutes.
        results[title] = rows
        if not args.json:
            print_table(title, rows)
            sys.stdout.flush()

    if not args.json:
        print(f"# fsRLM benchmarks — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
              f"executors: {', '.join(executors)}", flush=True)
    if "startup" in only:
        from fsrlm.benchmarks.startup import bench_startup

        section("command-line start-up (target <= 0.3 s)", bench_startup(5 if quick else 11))
    if "broker" in only:
        section("broker overhead (scripted model at 0 ms)", asyncio.run(bench_broker(100 if quick else 500)))
    if "batch" in only:
        cases = [(100, 1), (100, 4), (100, 16), (100, 64)]
        if not quick:
            cases += [(1000, 4), (1000, 16), (1000, 64)]
        section("llm_batch wall time, 200 ms per call (target: 100 calls at 16 within 1.3x ideal)",
                asyncio.run(bench_batch(cases, 200)))
    if "chunking" in only:
        section("chunking throughput and peak memory (target >= 100 MB/s, flat memory)",
                bench_chunking([1, 100] if quick else [1, 100, 1024]))
    if "runs" in only:
        section(RUNS, bench_runs(executors, 3 if quick else 7))
    if "jobs" in only:
        section(JOBS, bench_jobs(executors, 1 if quick else 3))
    if "parallel" in only:
        section(PARALLEL, bench_parallel(executors, [1, 4, 8] if quick else [1, 4, 8, 16]))

    if "remote" in only and any(e.startswith("docker") for e in executors):
        if args.remote_host or os.geteuid() == 0:
            from fsrlm.benchmarks.remote import (
                bench_overhead,
                bench_transfer,
                remote_host,
            )

            with remote_host(args.remote_host) as host:
                section("remote-docker vs docker, trivial 2-turn run (both under runc)", bench_overhead(host, 3 if quick else 5))
                section("remote-docker workspace transfer (in, then everything back)", bench_transfer(host, 100))
        else:
            print("(remote section skipped: give --remote-host, or run as root for a loopback dockerd)",
                  file=sys.stderr)

    if WARM_TARGETS_NEED <= set(results):
        section("warm-start targets (issue 15), from the tables above", warm_targets(results))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


RUNS, JOBS, PARALLEL = ("per-run overhead vs the bare CLI (same 2-turn script)",
                        "reference jobs (30 chunks at 0 ms, ~100 chunks at 200 ms), subcall concurrency 16",
                        "concurrent runs on this machine")
WARM_TARGETS_NEED = {RUNS, JOBS}


def warm_targets(results: dict[str, list[Row]]) -> list[Row]:
    """Each target of the warm-start work against this run's figures, for every docker kernel measured."""
    runs = {r["executor"]: r for r in results[RUNS]}
    jobs = {(r["job"].split(" records")[0], r["executor"]): r for r in results[JOBS]}
    rows: list[Row] = []

    def check(target: str, executor: str, value: float | None, limit: float) -> None:
        if value is not None:
            rows.append({"target": target, "executor": executor, "measured": round(value, 3), "limit": limit,
                         "met": value <= limit})

    for kernel in ("runc", "gvisor"):
        cold, warm = f"docker:{kernel}", f"{WARM}:{kernel}"
        check("per-run overhead over the bare CLI, cold (s)", cold, runs.get(cold, {}).get("overhead_s"), 0.5)
        check("per-run overhead over the bare CLI, warm (s)", warm, runs.get(warm, {}).get("overhead_s"), 0.1)
        check("J1 from a warm pool (s)", warm, jobs.get(("1200", warm), {}).get("wall_s"), 0.65)
        check("J2 from a warm pool (s)", warm, jobs.get(("4000", warm), {}).get("wall_s"), 2.1)
        for row in results.get(PARALLEL, []):
            if row["executor"] == warm and row["concurrent_runs"] == 16:
                rows.append({"target": "16 concurrent warm runs: failures", "executor": warm,
                             "measured": row["failures"], "limit": 0, "met": row["failures"] == 0})
    return rows


def _default_executors() -> list[str]:
    try:
        import docker

        from fsrlm.executors.docker.isolation import engine_runtimes, usable_gvisor

        info = docker.from_env().info()
    except Exception:
        print("(Docker engine not reachable: benchmarking the local executor only)", file=sys.stderr)
        return ["local"]
    if usable_gvisor(engine_runtimes(info), bind_socket=True) is None:  # runc and gVisor side by side when both
        print("(the engine has no gVisor runtime (`make gvisor`): docker under runc only)", file=sys.stderr)
        return ["local", "docker:runc", f"{WARM}:runc"]
    return ["local", "docker:runc", f"{WARM}:runc", "docker:gvisor", f"{WARM}:gvisor"]


if __name__ == "__main__":
    sys.exit(main())
