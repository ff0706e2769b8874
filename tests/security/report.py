"""The security report: a pytest plugin that records each attack's outcome, and the SECURITY.md table.

Run it with ``make security`` or ``python -m tests.security.report [PYTEST ARGS]``: it runs
``tests/security`` plus the tests of other suites listed in ``REFERENCED`` (attacks and bad
inputs already covered there), with this module loaded as a plugin (``-p
tests.security.report``), then rewrites the table between the markers in ``SECURITY.md``.
Nothing in the table is written by hand: each row comes from a test's ``finding(...)``
declaration (``tests/security/conftest.py``) or from ``REFERENCED``, and its outcome and
"observed" text from that test's run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECURITY_MD = ROOT / "SECURITY.md"
RESULTS_ENV = "FSRLM_SECURITY_RESULTS"
FINDING_KEY = "security_finding"  # as in conftest.py
RUNTIME_KEY = "sandbox_runtime"  # tests/conftest.py: the kernel a docker test ran under
KERNELS = {"runc": "runc (host kernel)", "runsc": "gVisor (runsc)"}
BEGIN = "<!-- BEGIN GENERATED TABLE: `make security` rewrites everything up to the END marker -->"
END = "<!-- END GENERATED TABLE -->"

AREAS = [
    "network", "credentials", "host filesystem", "terminal", "privileges", "resources", "broker", "request policy",
    "remote executor", "upstream faults", "crash and infrastructure faults", "bad input",
]

# Attacks and bad inputs covered by other suites: (area, name, tried, expected). The
# outcome still comes from running them; "observed" is "as expected" when they pass.
REFERENCED: dict[str, tuple[str, str, str, str]] = {
    "tests/executors/test_archive.py": (
        "remote executor", "hostile result archive",
        "absolute paths, `..`, symlinks, hard links, device files and a decompression bomb in the archive "
        "a remote sandbox sends back",
        "every hostile member refused; extraction stays inside the run folder and under its size cap",
    ),
    "tests/test_safe_fs.py": (
        "host filesystem", "links planted where the host writes",
        "symlinks (final component and directories, dangling), hard links, FIFOs and planted temp names "
        "where the broker and orchestrator write and read",
        "no write or read ever follows a link out of the workspace; FIFOs never block",
    ),
    "tests/executors/test_mountcheck.py": (
        "host filesystem", "a run folder swapped before the container starts (unit)",
        "the run folder replaced by a link or by another folder after the host made it; a container whose "
        "/workspace is not the folder the host made",
        "refused on the host before the container is created; the entrypoint exits 70 before anything runs",
    ),
    "tests/test_session.py": (
        "host filesystem", "saved system prompts in the session transcript (unit)",
        "prompt snapshots in the CLI's transcript, one after another, next to broken lines and links",
        "every snapshot removed and the conversation re-linked; nothing read or written through a link",
    ),
    "tests/viewer/test_viewer_api.py::test_only_loopback_host_names_are_answered": (
        "network", "DNS rebinding against the viewer (unit)",
        "requests to the viewer under another host name, with and without --allow-remote",
        "refused (403) unless loopback, an IP address, this machine's name or an --allow-host name",
    ),
    "tests/viewer/test_viewer_api.py::test_event_streams_are_capped": (
        "resources", "event streams held open on the viewer (unit)", "more live event streams than the cap",
        "503 with Retry-After past the cap; a slot frees when a stream closes",
    ),
    "tests/cli/test_cli.py::test_empty_input_file": (
        "bad input", "empty input file", "`fsrlm run empty.log`",
        "exit code 2 with a message saying the input is empty; nothing runs",
    ),
    "tests/test_workspace.py::test_prompt_from_bytes_binary_and_invalid_utf8": (
        "bad input", "binary and invalid UTF-8 (unit)", "bytes 0x00-0xff and invalid UTF-8 as the prompt",
        "stored byte for byte",
    ),
    "tests/test_workspace.py::test_messages_wrong_formats": (
        "bad input", "messages in the wrong format (unit)",
        "not a list, empty list, unknown role, content of the wrong type, unknown block type",
        "InputError naming the message and what is wrong",
    ),
    "tests/test_workspace.py::test_messages_images_saved_as_attachments": (
        "bad input", "images in messages (unit)", "base64 and URL image blocks",
        "base64 images saved under input/attachments/, URL images noted as not embedded",
    ),
    "tests/test_workspace.py::test_attachments_stay_inside": (
        "bad input", "attachment names with `..` or absolute paths (unit)",
        "`../../x`, `/etc/passwd`, `..\\\\x` as attachment names",
        "sanitised to a plain name inside input/attachments/",
    ),
    "tests/test_config.py::test_unknown_key_names_it": (
        "bad input", "unknown config keys (unit)", "an unknown key in fsrlm.toml",
        "ConfigError naming the key",
    ),
    "tests/test_config.py::test_every_limit_rejects_negative": (
        "bad input", "negative limits (unit)", "every limit set to a negative number",
        "ConfigError naming the field and its FSRLM_ variable",
    ),
    "tests/broker/test_server.py::test_invalid_subcall_requests_get_400": (
        "broker", "malformed subcall bodies (unit)", "invalid JSON, wrong types, missing messages",
        "400 invalid_request_error",
    ),
    "tests/broker/test_faults.py": (
        "upstream faults", "upstream faults at the broker (unit)",
        "429/5xx/529 with and without retry-after, dropped connections, stalls, 401/403, unreachable upstream",
        "retried with backoff or surfaced as 502/504; never a hang",
    ),
}


def _base(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


_RUNTIME_ID = re.compile(r"(?<=[\[-])(?:runc|runsc)(?=[\]-])")


def without_runtime(nodeid: str) -> str:
    """The test's id with its kernel parameter taken out: one row for its runc and gVisor runs."""
    if "[" not in nodeid:
        return nodeid
    base, params = nodeid.split("[", 1)
    params = _RUNTIME_ID.sub("", "[" + params).replace("[-", "[").replace("-]", "]").replace("--", "-")
    return base if params == "[]" else base + params


def _referenced(nodeid: str) -> str | None:
    base = _base(nodeid)
    for key in REFERENCED:
        if base == key or base.startswith(key + "::"):
            return key
    return None


# -- the plugin ----------------------------------------------------------------------------


class Recorder:
    """Collects one row per test (or per referenced group) with its outcome."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def _row(self, key: str, defaults: dict[str, Any]) -> dict[str, Any]:
        if key not in self.rows:
            self.rows[key] = {**defaults, "index": len(self.rows), "outcome": "passed", "failure": "",
                              "tests": [], "duration": 0.0, "kernels": {}}
        return self.rows[key]

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        finding = next((v for k, v in report.user_properties if k == FINDING_KEY), None)
        runtime = next((v for k, v in report.user_properties if k == RUNTIME_KEY), None)
        if runtime is None and (found := _RUNTIME_ID.search(report.nodeid)):  # skipped before the fixture ran
            runtime = found.group(0)
        if finding is not None:
            row = self._row(without_runtime(report.nodeid), {})
            row.update({k: v for k, v in finding.items() if k != "observed" or runtime is None})
        elif (ref := _referenced(report.nodeid)) is not None:
            area, name, tried, expected = REFERENCED[ref]
            row = self._row(ref, {"area": area, "name": name, "tried": tried, "expected": expected,
                                  "observed": "as expected", "referenced": ref})
        elif report.nodeid.startswith("tests/security/"):  # failed or skipped before declaring its row
            key = without_runtime(report.nodeid)
            row = self._row(key, {"area": "unrecorded", "name": key.rsplit("::", 1)[-1],
                                  "tried": "", "expected": "", "observed": ""})
        else:
            return
        test = without_runtime(report.nodeid)
        if test not in row["tests"]:
            row["tests"].append(test)
        row["duration"] += report.duration
        # One result per kernel (docker tests run under both), or one for the row (tests without a sandbox).
        result = row["kernels"].setdefault(runtime, {"outcome": "passed", "failure": "", "observed": ""}) \
            if runtime else row
        if runtime and finding is not None:
            result["observed"] = finding.get("observed", "")
        if report.failed:
            result["outcome"] = row["outcome"] = "failed"
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else (str(report.longrepr).strip().splitlines() or [""])[-1]
            result["failure"] = (f"{report.when}: " + str(message))[:400]
        elif report.skipped and result["outcome"] != "failed":
            result["outcome"] = "skipped"
            if row["outcome"] != "failed":
                row["outcome"] = "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            result["failure"] = str(reason).removeprefix("Skipped: ")[:200]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        data = {"started": self.started, "finished": time.time(), "exitstatus": int(exitstatus),
                "rows": sorted(self.rows.values(), key=lambda r: r["index"])}
        self.path.write_text(json.dumps(data, indent=1))


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        config.pluginmanager.register(Recorder(Path(path)), "fsrlm-security-recorder")


# -- the table -----------------------------------------------------------------------------


_TEMP_PATHS = (
    (re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+"), "<tmp>"),
    (re.compile(r"/tmp/fsrlm-broker-[^/\s]+"), "<broker dir>"),
    (re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b"), "<run id>"),
)


def _cell(text: str) -> str:
    text = " ".join(str(text).split())
    for pattern, placeholder in _TEMP_PATHS:  # the table should not change with every run's temp names
        text = pattern.sub(placeholder, text)
    return text.replace("|", "\\|")


def _test_name(row: dict[str, Any]) -> str:
    if row.get("referenced"):
        return f"`{_short(row['referenced'])}` (referenced)"
    return ", ".join(f"`{_short(t)}`" for t in row["tests"])


def _short(nodeid: str) -> str:
    return nodeid.removeprefix("tests/")


_OUTCOME = {"passed": "held", "failed": "**FAILED**", "skipped": "skipped"}


def _kernel_cells(row: dict[str, Any], runtime: str) -> tuple[str, str]:
    """(observed, outcome) of one row under one kernel."""
    kernels = row.get("kernels") or {}
    if not kernels:  # no sandbox in this test (a unit test, the local executor): one result for both
        result = row
        observed = (row.get("observed") or "") if runtime == "runc" else "same test: no sandbox kernel involved"
    elif runtime in kernels:
        result = kernels[runtime]
        observed = result.get("observed") or ""
    else:
        return "not run", "—"
    if result["outcome"] != "passed" and result.get("failure"):
        observed = (observed + "; " if observed else "") + result["failure"]
    return observed, _OUTCOME[result["outcome"]]


def render_table(data: dict[str, Any]) -> str:
    rows = data["rows"]
    order = {a: i for i, a in enumerate(AREAS)}
    rows = sorted(rows, key=lambda r: (order.get(r.get("area"), len(AREAS)), r["index"]))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(data["finished"]))
    minutes = (data["finished"] - data["started"]) / 60
    summary = []
    for runtime, title in KERNELS.items():
        outcomes = [_kernel_cells(r, runtime)[1] for r in rows]
        summary.append(f"{title}: **{outcomes.count('held')} held, {outcomes.count('**FAILED**')} failed, "
                       f"{outcomes.count('skipped')} skipped**")
    lines = [
        BEGIN,
        "",
        f"Generated {when} on {platform.system()} {platform.release()} ({platform.machine()}), Python "
        f"{platform.python_version()}, in {minutes:.1f} min. Every test that starts a sandbox ran twice, under "
        f"runc (the host's kernel) and under gVisor (runsc); {'; '.join(summary)}. \"Held\" means the test "
        "passed: the attack failed, or the fault was handled as expected.",
        "",
        "| area | attack or fault | what was tried | expected | observed under runc | runc | observed under gVisor "
        "| gVisor | test |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        runc, gvisor = _kernel_cells(r, "runc"), _kernel_cells(r, "runsc")
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.get("area", "?"), r.get("name", "?"), r.get("tried", ""), r.get("expected", ""), *runc, *gvisor))
            + f" | {_test_name(r)} |")
    lines += ["", END]
    return "\n".join(lines)


def update_security_md(table: str, path: Path = SECURITY_MD) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no generated-table markers; add {BEGIN!r} and {END!r}")
    path.write_text(pattern.sub(lambda _: table, text))


def main(argv: list[str] | None = None) -> int:
    """Run the security suite and the referenced tests, then regenerate the table in SECURITY.md."""
    extra = list(sys.argv[1:] if argv is None else argv)
    targets = ["tests/security"]
    for ref in REFERENCED:
        if (ROOT / ref.split("::", 1)[0]).is_file():
            targets.append(ref)
        else:
            print(f"security report: {ref} not found, left out", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="fsrlm-security-") as tmp:
        results = Path(tmp) / "results.json"
        # Every attack under both kernels here (make test twins only the kernel-sensitive suites).
        env = {**os.environ, RESULTS_ENV: str(results), "FSRLM_TEST_EVERY_KERNEL": "1"}
        cmd = [sys.executable, "-m", "pytest", *targets, "-p", "tests.security.report", *extra]
        print("+", " ".join(cmd), file=sys.stderr)
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        if not results.is_file():
            print("security report: pytest wrote no results; SECURITY.md left unchanged", file=sys.stderr)
            return code or 1
        data = json.loads(results.read_text())
    if code not in (0, 1) or not data["rows"]:  # interrupted, collection or usage error: keep the old table
        print(f"security report: pytest exited with {code}; SECURITY.md left unchanged", file=sys.stderr)
        return code or 1
    update_security_md(render_table(data))
    print(f"security report: {len(data['rows'])} rows written to {SECURITY_MD}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
