"""Checks of ``fsrlm run``'s INPUT before anything starts: not text, or dearer than the budget."""

from __future__ import annotations

from fsrlm.config import RLMConfig
from fsrlm.costs import estimate

SNIFF_BYTES = 8192

# Leading bytes of formats a user may hand over by mistake: what it is, the filter that turns a stream
# of it into text (for a pipe), and what to do with a file of it.
_MAGIC: list[tuple[bytes, str, str | None, str]] = [
    (b"\x1f\x8b", "gzip-compressed data", "zcat", "zcat {name} | fsrlm run - ..."),
    (b"BZh", "bzip2-compressed data", "bzcat", "bzcat {name} | fsrlm run - ..."),
    (b"\xfd7zXZ\x00", "xz-compressed data", "xzcat", "xzcat {name} | fsrlm run - ..."),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "zstdcat", "zstdcat {name} | fsrlm run - ..."),
    (b"PK\x03\x04", "a zip archive (or an Office document)", None, "unzip it and run on the text file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", None, "extract it and run on the text file"),
    (b"%PDF-", "a PDF document", "pdftotext - -", "pdftotext {name} - | fsrlm run - ..."),
    (b"\x7fELF", "an executable (ELF)", None, "run on its text output or logs instead"),
    (b"\x89PNG", "a PNG image", None, "attach images through the Python API's messages instead"),
    (b"\xff\xd8\xff", "a JPEG image", None, "attach images through the Python API's messages instead"),
    (b"PAR1", "a Parquet file", None, "export it as CSV or JSON lines first"),
    (b"SQLite format 3\x00", "an SQLite database", None, "dump it first: sqlite3 {name} .dump | fsrlm run - ..."),
    (b"\xff\xfe", "UTF-16 text", "iconv -f UTF-16 -t UTF-8", "iconv -f UTF-16 -t UTF-8 {name} | fsrlm run - ..."),
    (b"\xfe\xff", "UTF-16 text", "iconv -f UTF-16 -t UTF-8", "iconv -f UTF-16 -t UTF-8 {name} | fsrlm run - ..."),
]


def not_text(head: bytes, name: str | None) -> str | None:
    """Why ``head`` (the input's first bytes) is not text the models can read, with what to do; else None.

    ``name`` is the input file, or None for standard input.
    """
    shown = name or "the input on stdin"
    for magic, what, pipe_filter, file_fix in _MAGIC:
        if head.startswith(magic):
            if name is not None:
                fix = file_fix.format(name=name)
            elif pipe_filter:
                fix = f"put {pipe_filter.split()[0]} in the pipe: ... | {pipe_filter} | fsrlm run - ..."
            else:
                fix = "convert it to text before the pipe"
            return f"{shown} is {what}, not text: the agent and its models read text. Instead: {fix}"
    if b"\x00" in head:
        return (f"{shown} holds NUL bytes in its first {min(len(head), SNIFF_BYTES):,} bytes: it is binary data, "
                "not text, and the agent and its models read text. Convert it to text first")
    return None


def budget_note(size_bytes: int, config: RLMConfig) -> str | None:
    """A warning when one pass over the input is dearer than the budget or beyond the call limits."""
    e = estimate(size_bytes, config)
    mb = size_bytes / 1_000_000
    if not e.fits_call_limits:
        return (f"one pass of {config.effective_submodel} over this {mb:,.0f} MB input needs about "
                f"{e.subcalls[1]:,} subcalls, more than max_total_subcalls={config.max_total_subcalls}: "
                "the agent may have to sample or filter it first (grep), or raise the limit")
    budget = config.max_budget_usd
    if budget is not None and e.low > budget:
        return (f"one pass of {config.effective_submodel} over this {mb:,.1f} MB input costs about "
                f"${e.low:,.2f}–${e.high:,.2f} at list prices, more than the budget of ${budget:.2f}: the run "
                "will stop when the budget is spent unless the agent reads only part of it "
                f"(raise it with --max-budget-usd {max(e.high * 1.2, budget):.0f})")
    return None
