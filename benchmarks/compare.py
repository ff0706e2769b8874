"""The baseline: the same OOLONG rows answered by the root model alone, in one call each.

Each row becomes one Messages API call with the whole context window and the
question, made through fsRLM's own broker (one per row, as for an RLM run), so
the upstream, credentials, prices, limits and response cache are exactly those
of ``benchmarks.oolong``. A context longer than the model's window
(``--context-window-tokens``, estimated at ``--chars-per-token``) is cut at a
line boundary, keeping its start, and the row is recorded with
``truncated: true``; the question is always sent whole.

Usage::

    fsrlm bench compare --data rows.jsonl --dataset trec_coarse --context-len 131072 \\
        --out compare.jsonl --rlm-results results.jsonl

With ``--rlm-results`` (the ``--out`` of ``benchmarks.oolong``) the RLM and the
model alone are printed side by side on the rows both answered: score and cost.
Rows, resume, concurrency and exit codes work as in ``benchmarks.oolong``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from fsrlm.benchmarks.oolong import (
    HARNESS_GRACE_SECONDS,
    ResultsFile,
    add_row_arguments,
    check_arguments,
    load_selected_rows,
    now_iso,
    row_fields,
    rows_to_run,
    run_guarded,
    run_rows,
    score_row,
    selected_records,
)
from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.report import (
    RowResult,
    comparison_json,
    comparison_table,
    print_tables,
    read_results,
    report_json,
    report_tables,
)

from fsrlm.broker import Broker, BrokerSettings
from fsrlm.broker.upstreams import check_credentials
from fsrlm.config import RLMConfig, load_config
from fsrlm.errors import InputError
from fsrlm.run import limits_of, new_run_id

__all__ = ["RootModelAlone", "fit_context", "main"]

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW_TOKENS = 200_000
DEFAULT_CHARS_PER_TOKEN = 4.0
#: Tokens kept free for the message framing around the context and question.
PROMPT_OVERHEAD_TOKENS = 256
#: The script name the broker's audit log shows for these calls.
SCRIPT_NAME = "benchmarks.compare"


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
    budget = int(tokens * chars_per_token) - len(question) - 2
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


class RootModelAlone:
    """Answers one row with one call of the root model through a fresh broker."""

    def __init__(self, config: RLMConfig, *, window_tokens: int, chars_per_token: float,
                 max_output_tokens: int) -> None:
        self.config = config
        self.window_tokens = window_tokens
        self.chars_per_token = chars_per_token
        self.max_output_tokens = max_output_tokens
        self.model = config.effective_root_model

    def settings(self, run_id: str, token: str, workspace: Path) -> BrokerSettings:
        limits = limits_of(self.config).model_copy(update={"max_tokens_per_subcall": self.max_output_tokens})
        cache = (self.config.effective_cache_dir / "llm") if self.config.cache_responses else None
        return BrokerSettings(
            run_id=run_id, token=token, workspace=workspace, submodel=self.model, limits=limits,
            upstream=self.config.upstream, cache_dir=cache, subcall_concurrency=1,
        )

    async def __call__(self, row: OolongRow) -> RowResult:
        started = time.monotonic()
        context, truncated = fit_context(
            row.context_window_text, row.question, window_tokens=self.window_tokens,
            max_output_tokens=self.max_output_tokens, chars_per_token=self.chars_per_token,
        )
        body = {"messages": [{"role": "user", "content": f"{context}\n\n{row.question}"}],
                "model": self.model, "max_tokens": self.max_output_tokens}
        run_id, token = "compare-" + new_run_id(), secrets.token_urlsafe(32)
        with tempfile.TemporaryDirectory(prefix="fsrlm-compare-") as workspace:
            broker = Broker(self.settings(run_id, token, Path(workspace)))
            endpoint = await broker.start()
            try:
                status, payload = await self._post(endpoint.unix_socket, token, body)
            finally:
                await broker.stop()
        wall = round(time.monotonic() - started, 3)

        if status != 200:
            error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
            message = f"the broker answered {status}: {error.get('message') or payload}"
            return RowResult(**row_fields(row), method="root-only", score=0.0, success=False,
                             stop_reason=_stop_reason_for(status), errors=[message, *broker.fatal_errors],
                             wall_seconds=wall, truncated=truncated, model=self.model, run_id=run_id,
                             finished_at=now_iso())
        answer = str(payload.get("text", "")).strip()
        success = bool(answer)
        score, candidate, problems = score_row(row, answer, success)
        cost = float(payload.get("cost_usd") or 0.0)
        return RowResult(
            **row_fields(row), method="root-only", answer=answer or None, candidate=candidate, score=score,
            success=success, stop_reason="completed" if success else "no_answer",
            errors=problems if success else ["the model answered with no text"],
            root_cost_usd=cost, total_cost_usd=cost, wall_seconds=wall, cached=int(bool(payload.get("cached"))),
            turns=1, truncated=truncated, model=self.model, run_id=run_id, finished_at=now_iso(),
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrlm bench compare",
        description="Answer OOLONG rows with the root model alone (one call per row, through the broker).",
    )
    add_row_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("oolong-compare.jsonl"),
                        help="results JSONL, one line per finished row (default oolong-compare.jsonl)")
    parser.add_argument("--rlm-results", type=Path,
                        help="results JSONL of benchmarks.oolong: print RLM vs. model alone side by side")
    parser.add_argument("--context-window-tokens", type=int, default=DEFAULT_CONTEXT_WINDOW_TOKENS,
                        help="the root model's window in tokens; longer contexts are cut "
                             f"(default {DEFAULT_CONTEXT_WINDOW_TOKENS})")
    parser.add_argument("--chars-per-token", type=float, default=DEFAULT_CHARS_PER_TOKEN,
                        help="characters per token when estimating sizes (default 4)")
    parser.add_argument("--max-output-tokens", type=int,
                        help="max_tokens of each call (default: max_tokens_per_subcall of the config)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    return parser


def _check(args: argparse.Namespace) -> None:
    check_arguments(args)
    if args.context_window_tokens <= 0 or args.chars_per_token <= 0:
        raise InputError("--context-window-tokens and --chars-per-token must be positive")
    if args.max_output_tokens is not None and args.max_output_tokens <= 0:
        raise InputError("--max-output-tokens must be positive")
    if args.rlm_results is not None and not args.rlm_results.is_file():
        raise InputError(f"--rlm-results {args.rlm_results}: no such file")


def _print(records: Sequence[RowResult], rlm: Sequence[RowResult] | None, *, as_json: bool, source: str) -> None:
    if as_json:
        data: dict[str, Any] = {"root_only": report_json(records, source=source)}
        if rlm is not None:
            data["comparison"] = comparison_json(rlm, records)
        print(json.dumps(data, indent=2))
        return
    tables = report_tables(records, title="OOLONG, root model alone (one call per row)")
    if rlm is not None:
        tables.append(comparison_table(rlm, records))
    print_tables(tables)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline; return the exit code (as ``benchmarks.oolong``)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
                        format="%(levelname)s %(name)s: %(message)s")
    log = sys.stderr
    results = ResultsFile(args.out)

    def body() -> None:
        _check(args)
        config = load_config(args.fsrlm_config)
        rows = load_selected_rows(args)
        rlm = read_results(args.rlm_results) if args.rlm_results else None
        todo = rows_to_run(rows, results, args.resume, log)
        if todo:
            check_credentials(config.upstream)
            solve = RootModelAlone(
                config, window_tokens=args.context_window_tokens, chars_per_token=args.chars_per_token,
                max_output_tokens=args.max_output_tokens or config.max_tokens_per_subcall,
            )
            print(f"asking {solve.model} alone on {len(todo)} rows, {args.concurrency} at a time; "
                  f"results go to {results.path}", file=log)
            timeout = config.upstream.request_timeout_seconds * (config.upstream.max_retries + 1)
            asyncio.run(run_rows(todo, solve, concurrency=args.concurrency, results=results,
                                 row_timeout=timeout + HARNESS_GRACE_SECONDS, method="root-only", progress=log))
        _print(selected_records(results, rows), rlm, as_json=args.json, source=str(results.path))

    return run_guarded("compare", results, body, log)


if __name__ == "__main__":
    raise SystemExit(main())
