"""The baseline: the same OOLONG rows answered by the root model alone, one call each, as the authors ask it.

Each row is one Messages API call laid out as the OOLONG authors' harness lays
it out (``src/eval/eval_script_batched.py``): a system prompt of two text
blocks, ``"You are a helpful assistant."`` and the context window (marked for
prompt caching, so the questions of one window reuse it), and the question as
the one user message. The answer is scored as returned, exactly as theirs.

Output budget: the authors set no ``max_tokens``, so the model may write up to
its own limit; here ``max_tokens`` is the model's own output limit
(:mod:`benchmarks.models`, or ``--max-output-tokens``), lowered only as far as
the context window requires beside the whole context. Only when that would
leave less than ``--min-output-tokens`` is the context cut (after its last whole
line that fits, keeping its start) and the row recorded ``truncated: true``.
Sizes are estimated at ``--chars-per-token``. Differences from the authors'
harness, on purpose: no 1M-token context beta header (the window is the
model's standard one), and an explicit ``max_tokens`` (the Messages API needs
one); an answer cut at ``max_tokens`` says so in its record's errors.

Calls go through fsRLM's own broker (one per row, as for an RLM run), so the
upstream, credentials, prices, limits and response cache are exactly those of
``benchmarks.oolong``.

Usage::

    fsrlm bench compare --data rows.jsonl --dataset trec_coarse --context-len 131072 \\
        --out compare.jsonl --rlm-results results.jsonl

With ``--rlm-results`` (the ``--out`` of ``benchmarks.oolong``) the RLM and the
model alone are printed side by side on the rows both answered: score and cost.
Rows, resume, concurrency, ``--ray`` and the other options of ``fsrlm batch``, scoring and
exit codes work as in ``benchmarks.oolong``: on a Ray cluster each row's call is a task on a
node, with that node's broker (credentials from the Ray job's runtime environment) and no
sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from fsrlm.batch.node import JOB_DIR_PREFIX
from fsrlm.benchmarks.harness import (
    HARNESS_GRACE_SECONDS,
    ResultsFile,
    now_iso,
    row_fields,
    rows_to_run,
    run_guarded,
    score_row,
    selected_records,
)
from fsrlm.benchmarks.models import model_limits
from fsrlm.benchmarks.oolong import add_row_arguments, check_arguments, load_selected_rows, setup_logging
from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.report import comparison_json, comparison_table, report_json, report_tables
from fsrlm.benchmarks.results import RowResult, read_results
from fsrlm.benchmarks.row_task import RowSolver
from fsrlm.benchmarks.sweep import Part, add_fleet_arguments, fleet_options, sweep, where
from fsrlm.benchmarks.tables import print_tables
from fsrlm.broker import Broker, BrokerSettings
from fsrlm.config import RLMConfig, load_config
from fsrlm.errors import InputError
from fsrlm.run import limits_of, new_run_id

__all__ = ["SYSTEM_PROMPT", "Budget", "RootModelAlone", "add_budget_arguments", "baseline_part", "fit_context",
           "main", "solver_for"]

logger = logging.getLogger(__name__)

#: The first system block of the authors' harness.
SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_CONTEXT_WINDOW_TOKENS = 200_000
DEFAULT_CHARS_PER_TOKEN = 4.0
DEFAULT_MIN_OUTPUT_TOKENS = 4096
#: Tokens kept free for the message framing around the context and question.
PROMPT_OVERHEAD_TOKENS = 256
#: The script name the broker's audit log shows for these calls.
SCRIPT_NAME = "benchmarks.compare"


class Budget:
    """How many tokens one call may take in and write: the model's window and its own output limit."""

    def __init__(self, *, window_tokens: int, max_output_tokens: int, min_output_tokens: int,
                 chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.window_tokens = window_tokens
        self.max_output_tokens = max_output_tokens
        self.min_output_tokens = min(min_output_tokens, max_output_tokens)
        self.chars_per_token = chars_per_token

    def tokens(self, text: str) -> int:
        return int(len(text) / self.chars_per_token) + 1

    def fit(self, context: str, question: str) -> tuple[str, int, bool]:
        """The context to send, ``max_tokens`` for the call, and whether the context was cut."""
        prompt = self.tokens(context) + self.tokens(question) + self.tokens(SYSTEM_PROMPT) + PROMPT_OVERHEAD_TOKENS
        room = self.window_tokens - prompt
        if room >= self.min_output_tokens:
            return context, min(self.max_output_tokens, room), False
        kept, _ = fit_context(context, question, window_tokens=self.window_tokens,
                              max_output_tokens=self.min_output_tokens, chars_per_token=self.chars_per_token)
        return kept, self.min_output_tokens, True


def fit_context(
    context: str,
    question: str,
    *,
    window_tokens: int,
    max_output_tokens: int,
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
) -> tuple[str, bool]:
    """``context`` cut to fit the window beside ``question`` and the answer; and whether it was cut.

    The cut keeps the start of the context and ends after its last whole line
    that fits (mid-line only when not even one line fits).
    """
    tokens = window_tokens - max_output_tokens - PROMPT_OVERHEAD_TOKENS
    budget = int(tokens * chars_per_token) - len(question) - len(SYSTEM_PROMPT) - 2
    if len(context) <= budget:
        return context, False
    if budget <= 0:
        return "", True
    cut = context.rfind("\n", 0, budget)
    return context[: cut + 1] if cut > 0 else context[:budget], True


def _stop_reason_for(status: int) -> str:
    if status == 403:
        return "limit"
    if status in (401, 502, 503, 504, 529):
        return "upstream_error"
    return "error"


def request_body(model: str, context: str, question: str, max_tokens: int) -> dict[str, Any]:
    """The authors' layout: the context as a cached system block, the question as the user message."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "system": [{"type": "text", "text": SYSTEM_PROMPT},
                   {"type": "text", "text": context, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": question}],
    }


class RootModelAlone(RowSolver):
    """Answers one row with one call of the root model through a fresh broker (no sandbox)."""

    method = "root-only"
    sandboxes = False

    def __init__(self, config: RLMConfig, tokens: Budget, *, lenient: bool = False) -> None:
        super().__init__(config, lenient=lenient)
        self.tokens = tokens

    @property
    def model(self) -> str:
        return self.config.effective_root_model

    def settings(self, run_id: str, token: str, workspace: Path, max_tokens: int) -> BrokerSettings:
        limits = limits_of(self.config).model_copy(update={"max_tokens_per_subcall": max_tokens})
        cache = (self.config.effective_cache_dir / "llm") if self.config.cache_responses else None
        return BrokerSettings(
            run_id=run_id, token=token, workspace=workspace, submodel=self.model, limits=limits,
            upstream=self.config.upstream, cache_dir=cache, subcall_concurrency=1,
        )

    async def __call__(self, row: OolongRow) -> RowResult:
        started = time.monotonic()
        context, max_tokens, truncated = self.tokens.fit(row.context_window_text, row.question)
        body = request_body(self.model, context, row.question, max_tokens)
        run_id, token = "compare-" + new_run_id(), secrets.token_urlsafe(32)
        # Named as fsrlm batch names a job's folder, so a node's sweep removes it if this worker dies.
        with tempfile.TemporaryDirectory(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-compare-") as workspace:
            broker = Broker(self.settings(run_id, token, Path(workspace), max_tokens))
            endpoint = await broker.start()
            try:
                status, payload = await self._post(endpoint.unix_socket, token, body)
            finally:
                await broker.stop()
        wall = round(time.monotonic() - started, 3)
        common = {**row_fields(row, lenient=self.lenient), "method": "root-only", "wall_seconds": wall,
                  "truncated": truncated, "max_output_tokens": max_tokens, "model": self.model, "run_id": run_id}

        if status != 200:
            error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
            message = f"the broker answered {status}: {error.get('message') or payload}"
            return RowResult(**common, score=0.0, success=False, stop_reason=_stop_reason_for(status),
                             errors=[message, *broker.fatal_errors], finished_at=now_iso())
        answer = str(payload.get("text", ""))
        success = bool(answer.strip())
        score, candidate, problems = score_row(row, answer, success, lenient=self.lenient)
        errors = problems if success else ["the model answered with no text"]
        if payload.get("stop_reason") == "max_tokens":
            errors.append(f"the answer was cut at max_tokens ({max_tokens})")
        cost = float(payload.get("cost_usd") or 0.0)
        return RowResult(
            **common, answer=answer or None, candidate=candidate, score=score, success=success,
            stop_reason="completed" if success else "no_answer", errors=errors, root_cost_usd=cost,
            total_cost_usd=cost, cached=int(bool(payload.get("cached"))), turns=1, finished_at=now_iso(),
        )

    @staticmethod
    async def _post(socket: Path, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"x-api-key": token, "x-fsrlm-script": SCRIPT_NAME}
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as session:
            async with session.post("http://broker/fsrlm/v1/subcall", json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=None)) as response:
                raw = await response.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"error": {"message": raw[:500].decode("utf-8", "replace")}}
        return response.status, payload if isinstance(payload, dict) else {"error": {"message": str(payload)}}


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that size the baseline's calls."""
    group = parser.add_argument_group("the model alone")
    group.add_argument("--context-window-tokens", type=int,
                       help="the root model's window in tokens (default: the model's own, else "
                            f"{DEFAULT_CONTEXT_WINDOW_TOKENS})")
    group.add_argument("--max-output-tokens", type=int,
                       help="the most the model may write (default: the model's own output limit)")
    group.add_argument("--min-output-tokens", type=int, default=DEFAULT_MIN_OUTPUT_TOKENS,
                       help="cut the context rather than leave less room than this to answer "
                            f"(default {DEFAULT_MIN_OUTPUT_TOKENS})")
    group.add_argument("--chars-per-token", type=float, default=DEFAULT_CHARS_PER_TOKEN,
                       help="characters per token when estimating sizes (default 4)")


def check_budget_arguments(args: argparse.Namespace) -> None:
    for name in ("context_window_tokens", "max_output_tokens", "min_output_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive")
    if args.chars_per_token <= 0:
        raise InputError("--chars-per-token must be positive")


def solver_for(config: RLMConfig, args: argparse.Namespace) -> RootModelAlone:
    """The baseline of ``config``'s root model, sized by the budget options."""
    model = config.effective_root_model
    limits = model_limits(model)
    max_output = args.max_output_tokens or (limits.max_output_tokens if limits else None)
    if max_output is None:
        raise InputError(f"the output limit of model {model!r} is not known: pass --max-output-tokens N")
    window = args.context_window_tokens or (limits.context_window if limits else DEFAULT_CONTEXT_WINDOW_TOKENS)
    tokens = Budget(window_tokens=window, max_output_tokens=max_output, min_output_tokens=args.min_output_tokens,
                    chars_per_token=args.chars_per_token)
    return RootModelAlone(config, tokens, lenient=args.lenient)


def baseline_part(rows: Sequence[OolongRow], solve: RootModelAlone, results: ResultsFile, *,
                  title: str | None = None) -> Part:
    """Rows answered by one call of the model alone each, recorded in ``results``."""
    upstream = solve.config.upstream
    timeout = upstream.request_timeout_seconds * (upstream.max_retries + 1)
    return Part(rows=rows, solve=solve, results=results, row_timeout=timeout + HARNESS_GRACE_SECONDS, title=title)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrlm bench compare",
        description="Answer OOLONG rows with the root model alone (one call per row, through the broker).",
    )
    add_row_arguments(parser)
    add_budget_arguments(parser)
    add_fleet_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("oolong-compare.jsonl"),
                        help="results JSONL, one line per finished row (default oolong-compare.jsonl)")
    parser.add_argument("--rlm-results", type=Path,
                        help="results JSONL of benchmarks.oolong: print RLM vs. model alone side by side")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    return parser


def _print(records: Sequence[RowResult], rlm: Sequence[RowResult] | None, *, as_json: bool, source: str) -> None:
    if as_json:
        data: dict[str, Any] = {"root_only": report_json(records, source=source)}
        if rlm is not None:
            data["comparison"] = comparison_json(rlm, records)
        print(json.dumps(data, indent=2))
        return
    tables = report_tables(records, title="OOLONG, root model alone (one call per row)")
    if rlm is not None:
        tables.insert(1, comparison_table(rlm, records))
    print_tables(tables)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline; return the exit code (as ``benchmarks.oolong``)."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    log = sys.stderr
    results = ResultsFile(args.out)

    def body() -> int:
        check_arguments(args)
        check_budget_arguments(args)
        options = fleet_options(args)
        if args.rlm_results is not None and not args.rlm_results.is_file():
            raise InputError(f"--rlm-results {args.rlm_results}: no such file")
        config = load_config(args.fsrlm_config)
        solve = solver_for(config, args)
        rows = load_selected_rows(args, config)
        rlm = read_results(args.rlm_results) if args.rlm_results else None
        todo = rows_to_run(rows, results, args.resume, log)
        code = 0
        if todo:
            print(f"asking {solve.model} alone on {len(todo)} rows (up to {solve.tokens.max_output_tokens} output "
                  f"tokens), {where(options)}; results go to {results.path}", file=log)
            part = baseline_part(todo, solve, results)
            code = asyncio.run(sweep([part], options, config, environ=dict(os.environ), log=log)).exit_code
        _print(selected_records(results, rows), rlm, as_json=args.json, source=str(results.path))
        return code

    return run_guarded("compare", results.path, body, log)


if __name__ == "__main__":
    raise SystemExit(main())
