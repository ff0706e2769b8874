"""The ``fsrlm`` command line: help, clear user errors, and a full ``fsrlm run --json``."""

from __future__ import annotations

import json
import os
import sys
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import fsrlm_executable, scripted_cli_env  # tests/support.py, on sys.path through the root conftest

from fsrlm.cli.main import cli
from fsrlm.testing.plans import count_label_plan
from fsrlm.testing.scripted_model import ScriptedModelServer

RESULT_KEYS = {"answer", "success", "stop_reason", "metrics", "errors", "workspace_path", "run_id"}


def invoke(args: list[str], env: dict[str, str] | None = None, **kwargs) -> Result:
    return CliRunner().invoke(cli, args, env=env, prog_name="fsrlm", **kwargs)


def assert_clean_error(result: Result, code: int = 2) -> str:
    """A user mistake: the given exit code, a message on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()
    return result.stderr


# -- help ------------------------------------------------------------------------------


def test_help() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    assert "Recursive Language Model" in result.stdout
    for command in ("run", "gc", "image"):
        assert command in result.stdout


def test_run_help() -> None:
    result = invoke(["run", "--help"])
    assert result.exit_code == 0
    assert "Usage: fsrlm run [OPTIONS] INPUT" in result.stdout
    for option in ("--question", "--system", "--executor", "--config", "--workspace", "--json"):
        assert option in result.stdout
    assert "local" in result.stdout and "docker" in result.stdout
    assert "Exit codes" in result.stdout


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.stdout


# -- user mistakes: exit 2, one clear message ------------------------------------------


def test_missing_credentials(input_file: tuple[Path, int]) -> None:
    # isolated_env removed ANTHROPIC_* and FSRLM_* from the environment
    result = invoke(["run", str(input_file[0]), "--question", "How many ERROR lines?"])
    stderr = assert_clean_error(result)
    assert "No Anthropic API key found" in stderr
    for hint in ("ANTHROPIC_API_KEY", "FSRLM_UPSTREAM_API_KEY", "FSRLM_UPSTREAM=bedrock",
                 "FSRLM_UPSTREAM=compatible", "FSRLM_UPSTREAM_BASE_URL"):
        assert hint in stderr
    assert len(stderr.strip().splitlines()) == 1  # one paragraph


def test_missing_credentials_json_mode(input_file: tuple[Path, int]) -> None:
    stderr = assert_clean_error(invoke(["run", str(input_file[0]), "--json"]))
    assert "ANTHROPIC_API_KEY" in stderr


def test_missing_bedrock_credentials(input_file: tuple[Path, int], tmp_path: Path) -> None:
    env = {
        "FSRLM_UPSTREAM": "bedrock",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    stderr = assert_clean_error(invoke(["run", str(input_file[0])], env=env))
    assert "AWS" in stderr and "Bedrock" in stderr


def test_compatible_without_base_url(input_file: tuple[Path, int]) -> None:
    stderr = assert_clean_error(invoke(["run", str(input_file[0])], env={"FSRLM_UPSTREAM": "compatible"}))
    assert "FSRLM_UPSTREAM_BASE_URL" in stderr


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    stderr = assert_clean_error(invoke(["run", str(missing)], env={"ANTHROPIC_API_KEY": "k"}))
    assert str(missing) in stderr and "does not exist" in stderr


def test_bad_config_from_env(input_file: tuple[Path, int]) -> None:
    result = invoke(["run", str(input_file[0])], env={"FSRLM_MAX_SCRIPTS": "-1"})
    stderr = assert_clean_error(result)
    assert "max_scripts" in stderr and "FSRLM_MAX_SCRIPTS" in stderr


def test_bad_config_file(input_file: tuple[Path, int], tmp_path: Path) -> None:
    config = tmp_path / "fsrlm.toml"
    config.write_text("[fsrlm]\nmax_turnz = 3\n")
    stderr = assert_clean_error(invoke(["run", str(input_file[0]), "--config", str(config)]))
    assert "max_turnz" in stderr
    stderr = assert_clean_error(invoke(["run", str(input_file[0]), "--config", str(tmp_path / "missing.toml")]))
    assert "missing.toml" in stderr and "does not exist" in stderr


def test_bad_flag_value(input_file: tuple[Path, int]) -> None:
    stderr = assert_clean_error(invoke(["run", str(input_file[0]), "--max-turns", "0"]))
    assert "max_turns" in stderr


def test_unknown_executor_flag(input_file: tuple[Path, int]) -> None:
    result = invoke(["run", str(input_file[0]), "--executor", "k8s"])
    assert result.exit_code == 2
    assert "local" in result.stderr and "docker" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_input_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    env = {"FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": "http://127.0.0.1:9"}
    stderr = assert_clean_error(invoke(["run", str(empty), "--executor", "local"], env=env))
    assert "empty" in stderr


# -- a full run against the scripted model ---------------------------------------------


@pytest.fixture
def scripted_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with ScriptedModelServer(count_label_plan(chunk_size=4000)) as srv:
        yield scripted_cli_env(srv.url, tmp_path)


def check_json_result(stdout: str, count: int) -> dict:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout is not one JSON object: {stdout!r}"
    summary = json.loads(lines[0])
    assert isinstance(summary, dict)
    assert RESULT_KEYS <= set(summary)
    assert "artifacts" not in summary
    assert summary["answer"] == str(count), summary
    assert summary["success"] is True and summary["stop_reason"] == "completed"
    assert summary["errors"] == []
    assert summary["metrics"]["subcalls"] >= 2 and summary["metrics"]["scripts"] == 1
    assert summary["run_id"]
    return summary


def test_run_json_local(scripted_env: dict[str, str], input_file: tuple[Path, int], tmp_path: Path) -> None:
    path, count = input_file
    parent = tmp_path / "runs"
    parent.mkdir()
    (parent / "keep.txt").write_text("the user's file")
    result = invoke(["run", str(path), "--json", "--executor", "local", "--question", "How many ERROR lines?",
                     "--workspace", str(parent)], env=scripted_env)
    assert result.exit_code == 0, (result.output, result.exception)
    summary = check_json_result(result.stdout, count)
    # --workspace keeps the run folder, in its own subfolder of the given parent, which is not wiped
    workspace = Path(summary["workspace_path"])
    assert workspace.parent == parent.resolve()
    assert sorted(p.name for p in parent.iterdir()) == sorted(["keep.txt", workspace.name])
    assert (parent / "keep.txt").read_text() == "the user's file"
    assert (workspace / "input" / "prompt.md").read_bytes() == path.read_bytes()
    assert (workspace / "input" / "question.md").read_text() == "How many ERROR lines?"
    assert (workspace / "output" / "answer.md").read_text().strip() == str(count)
    assert (workspace / "state" / "subcalls.jsonl").is_file()


def test_run_json_from_stdin(scripted_env: dict[str, str], input_file: tuple[Path, int]) -> None:
    path, count = input_file
    result = invoke(["run", "-", "--json", "--executor", "local"], env=scripted_env, input=path.read_bytes())
    assert result.exit_code == 0, (result.output, result.exception)
    summary = check_json_result(result.stdout, count)
    assert summary["workspace_path"] is None  # a successful run's folder is removed by default



def test_run_json_real_subprocess(scripted_env: dict[str, str], input_file: tuple[Path, int]) -> None:
    path, count = input_file
    env = {**os.environ, **scripted_env}  # os.environ is already scrubbed by isolated_env
    proc = subprocess.run(
        [fsrlm_executable(), "run", str(path), "--json", "--executor", "local", "-q", "How many ERROR lines?"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    check_json_result(proc.stdout, count)
    assert "Traceback" not in proc.stderr


def test_real_subprocess_user_error(tmp_path: Path) -> None:
    env = {**os.environ, "FSRLM_MAX_SCRIPTS": "-1"}
    proc = subprocess.run([fsrlm_executable(), "run", str(tmp_path / "x.log")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "FSRLM_MAX_SCRIPTS" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_commands_start_without_loading_the_sdks() -> None:
    """`fsrlm --help` (and the help of gc and view) loads neither the Agent SDK, the docker SDK nor aiohttp."""
    code = ("import sys; from fsrlm.cli.main import cli\n"
            "for args in (['--help'], ['gc', '--help'], ['view', '--help']):\n"
            "    try:\n"
            "        cli(args, prog_name='fsrlm')\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = [m for m in ('claude_agent_sdk', 'mcp', 'docker', 'aiohttp', 'ray') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from fsrlm import RLM  # still there, loaded on first use\n"
            "assert 'claude_agent_sdk' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
