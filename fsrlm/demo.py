"""``make demo``: the whole pipeline offline, with a SCRIPTED model standing in for Claude.

Nothing here talks to a real model: the root agent's moves and the subcall
answers come from ``fsrlm.testing.scripted_model``. Everything else is real —
the Claude Code CLI, the broker, the sandbox (the configured executor), the
cache and the audit log.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

from fsrlm.config import load_config
from fsrlm.rlm import RLM
from fsrlm.testing.plans import count_label_plan
from fsrlm.testing.scripted_model import ScriptedModelServer


def make_log(path: Path, lines: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    errors = 0
    with path.open("w") as f:
        for i in range(lines):
            level = rng.choices(["INFO", "WARN", "ERROR"], weights=[85, 10, 5])[0]
            errors += level == "ERROR"
            f.write(f"2026-11-25T10:{i // 60 % 60:02d}:{i % 60:02d}Z svc-{rng.randint(1, 9)} {level} "
                    f"request {i} took {rng.randint(3, 900)} ms\n")
    return errors


def main() -> int:
    print("fsRLM demo — the model is SCRIPTED (no API key, no network): the agent's moves are canned,")
    print("but the Claude Code CLI, the broker, the sandbox, the cache and the audit log are real.\n")
    with tempfile.TemporaryDirectory(prefix="fsrlm-demo-") as tmp:
        log = Path(tmp) / "service.log"
        expected = make_log(log, 20_000)
        with ScriptedModelServer(count_label_plan(chunk_size=32_000)) as model:
            config = load_config(overrides={
                "upstream": {"type": "compatible", "base_url": model.url},
                "root_model": "scripted-root", "submodel": "scripted-sub",
                "cache_dir": str(Path(tmp) / "cache"), "workspace_dir": str(Path(tmp) / "runs"),
                "preserve_workspace": True,
            })
            print(f"input: {log.stat().st_size:,} bytes, executor: {config.executor.type}")
            print("question: How many lines contain ERROR?\n")
            for attempt in ("first run", "same question again (served from the cache)"):
                result = RLM(config).invoke(log, question="How many lines contain ERROR?")
                m = result.metrics
                print(f"{attempt}: answer={result.answer} (expected {expected}) success={result.success}")
                print(f"  {m.turns} turns, {m.subcalls} subcalls upstream, {m.subcalls_cached} from cache, "
                      f"{len(result.artifacts)} artifacts, {m.wall_seconds:.2f}s, "
                      f"scripted cost ${m.total_cost_usd:.4f}")
                if not result.success:
                    print("  errors:", *result.errors, sep="\n    ")
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
