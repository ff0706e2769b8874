"""What a user sees when a run does not go well: the message, the exit code, the time to fail.

Every run here is real (the Claude Code CLI, the broker, the scripted model); the
command line is run as a user runs it — a subprocess — wherever a signal or the
process's own streams matter.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import fsrlm_executable, log_lines, scripted_cli_env

from fsrlm.cli.main import cli
from fsrlm.testing.plans import FinalStep, Plan, bash_plan, count_label_plan
from fsrlm.testing.scripted_model import ScriptedModelServer


# A command that keeps the agent busy (the CLI refuses a bare `sleep N` as a way of waiting).
BUSY = "python3 -c 'import time; time.sleep(60)'"


def invoke(args: list[str], env: dict[str, str] | None = None, **kwargs) -> Result:
    return CliRunner().invoke(cli, args, env=env, prog_name="fsrlm", **kwargs)



@pytest.fixture
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(count_label_plan(chunk_size=4000)) as server:
        yield server


@pytest.fixture
def env(model: ScriptedModelServer, tmp_path: Path) -> dict[str, str]:
    return {**scripted_cli_env(model.url, tmp_path), "FSRLM_EXECUTOR": "local",
            "FSRLM_WORKSPACE_DIR": str(tmp_path / "runs")}  # kept (failed) run folders stay in the test's tmp


def kept_folder(stderr: str) -> Path:
    line = next(line for line in stderr.splitlines() if "the run folder is kept: " in line)
    return Path(line.split("the run folder is kept: ", 1)[1].strip())


# -- success, quietly ----------------------------------------------------------------------


def test_quiet_prints_the_answer_and_nothing_else(env: dict[str, str], input_file: tuple[Path, int]) -> None:
    result = invoke(["run", str(input_file[0]), "-q", "How many ERROR lines?", "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(input_file[1])
    assert result.stderr == ""  # no progress, no summary line


def test_without_quiet_a_summary_line_follows(env: dict[str, str], input_file: tuple[Path, int]) -> None:
    result = invoke(["run", str(input_file[0]), "-q", "How many ERROR lines?"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("[completed] 3 turns")  # the summary line


# -- a failed run says where its folder is ---------------------------------------------------


def test_a_run_without_an_answer_says_where_its_folder_is(env, model, input_file) -> None:
    model.plan = Plan([FinalStep("I looked but wrote nothing.")])
    for quiet in ([], ["--quiet"]):
        result = invoke(["run", str(input_file[0]), "-q", "How many ERROR lines?", *quiet], env=env)
        assert result.exit_code == 1, result.output
        folder = kept_folder(result.stderr)
        assert (folder / "state" / "job.json").is_file()
        assert f"fsrlm resume {folder}" in result.stderr and f"fsrlm view {folder}" in result.stderr
        assert "error: the agent finished without writing output/answer.md" in result.stderr
        assert ("[no_answer]" in result.stderr) == (not quiet)  # --quiet drops only the summary


def test_json_of_a_failed_run_names_the_folder(env, model, input_file) -> None:
    model.plan = Plan([FinalStep("nothing")])
    result = invoke(["run", str(input_file[0]), "--json"], env=env)
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["stop_reason"] == "no_answer" and summary["success"] is False
    assert Path(summary["workspace_path"]) == kept_folder(result.stderr)


# -- Ctrl-C ------------------------------------------------------------------------------------


def start_and_interrupt(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """Start ``fsrlm run`` as a user would, press Ctrl-C once the agent is busy, return what it printed."""
    proc = subprocess.Popen([fsrlm_executable(), *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        for line in proc.stderr:  # plain progress lines: the agent's Bash call shows up
            seen.append(line)
            if "Bash: python3 -c" in line or time.monotonic() > deadline:
                break
        assert any("Bash: python3 -c" in line for line in seen), "".join(seen)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err), took


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_folder_is(env, model, input_file) -> None:
    model.plan = bash_plan(BUSY)
    proc, took = start_and_interrupt(["run", str(input_file[0]), "-q", "How many ERROR lines?"], env)
    assert proc.returncode == 130, proc.stderr
    assert took < 10, took  # the sandbox and the broker are stopped, not waited out
    tail = proc.stderr.strip().splitlines()
    assert tail[-2].startswith("fsrlm: interrupted; the run folder is kept: "), tail
    folder = kept_folder(proc.stderr)
    assert (folder / "state" / "job.json").is_file()
    assert tail[-1].strip() == f"continue it: fsrlm resume {folder}"
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_ctrl_c_with_json_prints_the_interrupted_result(env, model, input_file) -> None:
    model.plan = bash_plan(BUSY)
    proc, took = start_and_interrupt(["run", str(input_file[0]), "-q", "How many ERROR lines?", "--json"], env)
    assert proc.returncode == 130, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stop_reason"] == "interrupted" and summary["success"] is False and summary["answer"] is None
    assert Path(summary["workspace_path"]) == kept_folder(proc.stderr)
    assert summary["run_id"] == Path(summary["workspace_path"]).name  # workspace_dir/<run id>
    assert summary["metrics"]["root_calls"] >= 1  # what the run had done, from its events
    assert summary["metrics"]["total_cost_usd"] > 0


# -- the budget ----------------------------------------------------------------------------------


def test_a_budget_stop_ends_with_the_budget(env, model, input_file) -> None:
    # The root call's worst case (max_tokens 32,000) is more than $0.01: refused before it goes upstream.
    result = invoke(["run", str(input_file[0]), "-q", "How many ERROR lines?", "--max-budget-usd", "0.01"], env=env)
    assert result.exit_code == 3, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fsrlm: budget of $0.01 could not hold the next call's worst case ($0.00 spent)"), last
    assert "a run limit refused the root agent's call" in result.stderr and "model API failed" not in result.stderr
    assert "--max-budget-usd" in last and "fsrlm resume" in last
    assert kept_folder(result.stderr).is_dir()


def test_the_budget_note_comes_before_anything_runs(tmp_path: Path) -> None:
    big = tmp_path / "big.log"
    big.write_text(log_lines(20_000)[0])  # 2.3 MB: one pass is about $0.8-$2
    started = time.monotonic()
    result = invoke(["run", str(big), "--max-budget-usd", "0.05"], env={})  # no key: stops at the credentials
    assert time.monotonic() - started < 5
    assert result.exit_code == 2
    note = result.stderr.splitlines()[0]
    assert note.startswith("fsrlm: note: one pass of claude-haiku-4-5 over this 2.3 MB input costs about $")
    assert "more than the budget of $0.05" in note and "--max-budget-usd" in note


# -- input that is not text ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "nul"])
def test_binary_input_is_refused_before_anything_runs(kind: str, tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / ("app.log.gz" if kind == "gzip" else "app.bin")
    data = log_lines()[0].encode()
    path.write_bytes(gzip.compress(data) if kind == "gzip" else data[:100] + b"\x00\x01\x02" + data[100:])
    runs = tmp_path / "runs"
    result = invoke(["run", str(path), "--workspace", str(runs)], env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and result.stdout == ""
    message = result.stderr
    if kind == "gzip":
        assert "is gzip-compressed data, not text" in message and f"zcat {path} | fsrlm run -" in message
    else:
        assert "NUL bytes" in message
    assert "--allow-binary" in message
    assert not runs.exists()  # nothing ran, nothing was written


def test_allow_binary_runs_on_the_bytes(tmp_path: Path, env: dict[str, str], model) -> None:
    path = tmp_path / "app.bin"
    path.write_bytes(b"ERROR one\n\x00\nERROR two\n")
    model.plan = Plan([FinalStep("read it")])
    result = invoke(["run", str(path), "--allow-binary", "--json"], env=env)
    assert result.exit_code == 1, result.output  # it ran (and the scripted agent wrote no answer)
    assert json.loads(result.stdout)["stop_reason"] == "no_answer"


# -- configuration mistakes -------------------------------------------------------------------------


def test_a_misspelt_variable_is_refused_with_a_suggestion(input_file, env) -> None:
    result = invoke(["run", str(input_file[0])], env={**env, "FSRLM_MAX_SUBCALS_PER_SCRIPT": "3"})
    assert result.exit_code == 2
    assert ("FSRLM_MAX_SUBCALS_PER_SCRIPT: not an fsRLM setting; did you mean FSRLM_MAX_SUBCALLS_PER_SCRIPT?"
            in result.stderr)
    assert "Traceback" not in result.stderr


def test_an_unknown_field_in_the_file_gets_a_suggestion(input_file, tmp_path: Path) -> None:
    config = tmp_path / "fsrlm.toml"
    config.write_text("max_turnz = 3\n[executor]\ntype = 'docker'\nmemroy = '1g'\n")
    result = invoke(["run", str(input_file[0]), "--config", str(config)])
    assert result.exit_code == 2
    assert "max_turnz: unknown setting; did you mean max_turns?" in result.stderr
    assert "executor.memroy: unknown setting of the docker executor; did you mean executor.memory?" in result.stderr


# -- help and flags ------------------------------------------------------------------------------------


def test_run_help_explains_every_option_and_exit_code() -> None:
    from fsrlm.cli.run import run

    result = invoke(["run", "--help"])
    assert result.exit_code == 0
    for param in run.params:
        if isinstance(param, __import__("click").Option):
            assert param.help, f"{param.opts} has no help text"
    text = " ".join(result.stdout.split())
    for code in ("0 answer written", "1 no answer", "2 configuration", "3 a limit", "4 sandbox", "5 model API",
                 "130 interrupted"):
        assert code in text, code
    for option in ("--upstream [anthropic|bedrock|compatible]", "--upstream-url URL", "--max-turns", "--quiet",
                   "--preserve-workspace", "--max-budget-usd"):
        assert option in text, option


def test_upstream_url_flag_reaches_the_scripted_model(model, input_file, tmp_path: Path) -> None:
    env = {"FSRLM_CACHE_DIR": str(tmp_path / "cache"), "FSRLM_EXECUTOR": "local",  # no FSRLM_UPSTREAM*
           "FSRLM_WORKSPACE_DIR": str(tmp_path / "runs")}
    result = invoke(["run", str(input_file[0]), "-q", "How many ERROR lines?", "--upstream-url", model.url,
                     "--root-model", "scripted-root", "--submodel", "scripted-sub", "--quiet"], env=env)
    assert result.exit_code == 0, result.output  # compatible implied: no key needed
    assert result.stdout.strip() == str(input_file[1])
    assert model.requests_of("subcall")


# -- log lines ----------------------------------------------------------------------------------------------


def test_warnings_reach_the_user_as_sentences() -> None:
    import logging

    import click

    @click.command("log-probe")
    def probe() -> None:
        logging.getLogger("fsrlm.executors.docker.remote").warning("not copied back: %s", "x")

    cli.add_command(probe)
    try:
        plain = invoke(["log-probe"])
        verbose = invoke(["-v", "log-probe"])
    finally:
        cli.commands.pop("log-probe")
    assert plain.stderr == "fsrlm: warning: not copied back: x\n"
    assert verbose.stderr == "WARNING fsrlm.executors.docker.remote: not copied back: x\n"


@pytest.mark.docker
@pytest.mark.slow
def test_a_docker_timeout_prints_no_raw_log_line(env, model, input_file, docker_image) -> None:
    model.plan = bash_plan(BUSY)
    started = time.monotonic()
    proc = subprocess.run([fsrlm_executable(), "run", str(input_file[0]), "--executor", "docker", "--timeout", "4"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert took < 30, took
    assert "WARNING" not in proc.stderr and "executors.docker" not in proc.stderr, proc.stderr
    assert "error: the run exceeded timeout_seconds=4" in proc.stderr
    assert kept_folder(proc.stderr).is_dir()


def test_bad_input_and_bad_settings_fail_before_the_agent_sdk_loads(tmp_path: Path) -> None:
    """The time to fail is the command line's start-up alone: nothing heavy is imported first."""
    gz = tmp_path / "app.log.gz"
    gz.write_bytes(gzip.compress(b"ERROR x\n"))
    code = ("import sys; from fsrlm.cli.main import cli\n"
            f"for args, env in (([\'run\', {str(gz)!r}], {{}}), ([\'run\', {str(gz)!r}, \'--allow-binary\'], "
            "{'FSRLM_MAX_SUBCALS_PER_SCRIPT': '3'})):\n"
            "    import os; os.environ.update(env)\n"
            "    try:\n"
            "        cli(args, prog_name='fsrlm')\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 2, e.code\n"
            "heavy = [m for m in ('claude_agent_sdk', 'docker', 'aiohttp') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "is gzip-compressed data" in proc.stderr and "did you mean FSRLM_MAX_SUBCALLS_PER_SCRIPT" in proc.stderr


def test_binary_input_on_a_pipe_is_refused_with_a_filter_to_add(tmp_path: Path) -> None:
    proc = subprocess.run([fsrlm_executable(), "run", "-"], input=gzip.compress(b"ERROR x\n" * 100),
                          capture_output=True, timeout=60, env={**os.environ, "FSRLM_WORKSPACE_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (
        "fsrlm: the input on stdin is gzip-compressed data, not text: the agent and its models read text. "
        "Instead: put zcat in the pipe: ... | zcat | fsrlm run - ...; or pass --allow-binary to run on the "
        "bytes as they are.")
    assert list(tmp_path.iterdir()) == []  # nothing was written
