"""Bad input: each gets a clear error before anything starts, or a defined behaviour.

Unit-level cases live in tests/test_workspace.py and tests/test_config.py (the
security report lists them); here the same inputs go through the real entry
points — ``fsrlm run`` or ``RLM.invoke`` — with the Docker sandbox.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from security_support import MB, PREAMBLE, our_containers
from support import FAKE_UPSTREAM_KEY, kernel_env

from fsrlm import RLM
from fsrlm.errors import InputError
from fsrlm.testing.plans import script_plan

pytestmark = pytest.mark.docker


@pytest.fixture
def cli_env(scripted, tmp_path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
        "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
        "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
        "FSRLM_WORKSPACE_DIR": str(tmp_path / "runs"), "FSRLM_PRESERVE_WORKSPACE": "true",
        "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_EXECUTOR": "docker",
        "FSRLM_TIMEOUT_SECONDS": "120",
        **kernel_env(),  # this test's kernel (runc or gVisor)
    }


def fsrlm(args: list[str], env: dict[str, str], *, stdin: bytes | None = None, timeout: float = 180):
    return subprocess.run([sys.executable, "-m", "fsrlm.cli.main", *args], env=env, input=stdin,
                          capture_output=True, timeout=timeout)


def _clean_error(proc) -> str:
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, stderr[-1500:])
    assert "Traceback" not in stderr and proc.stdout == b""
    return stderr.strip().splitlines()[-1]


def test_empty_and_whitespace_input(cli_env, make_config, tmp_path, finding):
    f = finding(
        "bad input", "empty or whitespace-only input",
        tried="`fsrlm run` on an empty file, on empty stdin, on a file of spaces and newlines; "
              "RLM.invoke('') and RLM.invoke('  \\n\\t ')",
        expected="exit code 2 / InputError saying the input is empty; no workspace kept, no container",
    )
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"  \n\t \r\n   \n")
    messages = [_clean_error(fsrlm(["run", str(tmp_path / "empty.txt")], cli_env)),
                _clean_error(fsrlm(["run", "-"], cli_env, stdin=b"")),
                _clean_error(fsrlm(["run", str(tmp_path / "blank.txt")], cli_env))]
    for prompt in ("", "  \n\t "):
        with pytest.raises(InputError) as err:
            RLM(make_config("docker")).invoke(prompt, question="q")
        messages.append(str(err.value))
    assert all("empty" in m for m in messages), messages
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    f.observed = "; ".join(sorted(set(messages)))


def test_binary_and_invalid_utf8_input(cli_env, scripted, tmp_path, finding):
    f = finding(
        "bad input", "binary and invalid UTF-8 input",
        tried="`fsrlm run` on 64 KB of every byte value, with invalid UTF-8 sequences and NULs; then the same "
              "with --allow-binary",
        expected="refused before anything runs (exit 2, nothing written) with a message saying it is not text; "
                 "with --allow-binary stored byte for byte in input/prompt.md (the agent reads the same bytes), "
                 "the preview shown to the agent decoded with replacement characters, and the run completes",
    )
    data = bytes(range(256)) * 200 + b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x82\x00" * 1000
    (tmp_path / "blob.bin").write_bytes(data)
    scripted.plan = script_plan(textwrap.dedent("""
        import hashlib
        from llm_client import write_answer
        write_answer(hashlib.sha256(open("input/prompt.md", "rb").read()).hexdigest())
    """))
    refused = _clean_error(fsrlm(["run", str(tmp_path / "blob.bin"), "-q", "What is this?", "--json"], cli_env))
    assert "holds NUL bytes" in refused and "--allow-binary" in refused
    assert not scripted.requests  # nothing ran
    proc = fsrlm(["run", str(tmp_path / "blob.bin"), "-q", "What is this?", "--json", "--allow-binary"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    summary = json.loads(proc.stdout)
    assert summary["answer"] == hashlib.sha256(data).hexdigest()
    workspace = Path(summary["workspace_path"])
    assert (workspace / "input" / "prompt.md").read_bytes() == data
    first_user = scripted.requests_of("root")[0].body["messages"][0]
    assert "\ufffd" in json.dumps(first_user, ensure_ascii=False)
    why = refused.split(" holds ", 1)[1].split(":", 1)[0]  # no path of this machine in the report
    f.observed = (f"refused with exit 2 (blob.bin holds {why}), nothing ran; with --allow-binary {len(data)} bytes "
                  f"stored and read back identically (sha256 matches), preview decoded with U+FFFD, run "
                  f"{summary['stop_reason']}")


@pytest.mark.slow
def test_one_gigabyte_input_keeps_memory_flat(cli_env, scripted, tmp_path, finding):
    f = finding(
        "bad input", "a 1 GB input",
        tried="`fsrlm run` on a 1 GB file, compared with the same run on a 1 KB file (peak RSS of the "
              "orchestrator process, from wait4)",
        expected="the input is streamed to the workspace: the orchestrator's peak memory grows by a few MB at most",
    )
    scripted.plan = script_plan(textwrap.dedent("""
        import os
        from llm_client import write_answer
        write_answer(str(os.path.getsize("input/prompt.md")))
    """))
    line = b"2026-01-01T00:00:00 host-1 INFO request finished with payload " + b"x" * 60 + b"\n"
    block = line * (MB // len(line) + 1)
    block = block[: MB - 1] + b"\n"

    def peak_rss(path: Path) -> tuple[int, dict]:
        proc = subprocess.Popen([sys.executable, "-m", "fsrlm.cli.main", "run", str(path), "-q", "Size?",
                                 "--json"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = proc.stdout.read()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, err.decode()[-1500:]
        return usage.ru_maxrss * 1024, json.loads(out)

    small, big = tmp_path / "small.log", tmp_path / "big.log"
    small.write_bytes(block[:1024])
    with big.open("wb") as fh:
        for _ in range(1024):
            fh.write(block)
    try:
        base_rss, _ = peak_rss(small)
        big_rss, summary = peak_rss(big)
    finally:
        big.unlink()
        for prompt in (tmp_path / "runs").glob("*/input/prompt.md"):
            prompt.unlink()
    assert summary["answer"] == str(1024 * MB) and summary["success"]
    growth = big_rss - base_rss
    assert growth < 64 * MB, growth / MB
    f.observed = (f"answered {int(summary['answer']) >> 20} MB; orchestrator peak RSS {big_rss / MB:.0f} MB vs "
                  f"{base_rss / MB:.0f} MB for 1 KB ({growth / MB:+.0f} MB)")


def test_messages_in_the_wrong_format(make_config, tmp_path, finding):
    f = finding(
        "bad input", "messages in the wrong format",
        tried="RLM.invoke(messages=...) with a system role, a number as content, an unknown block type, an "
              "empty list, a dict instead of a list, and both prompt= and messages=",
        expected="InputError naming the problem, before any workspace or container exists",
    )
    bad = {
        "system role": [{"role": "system", "content": "x"}],
        "number content": [{"role": "user", "content": 42}],
        "unknown block": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "Bash",
                                                         "input": {}}]}],
        "empty list": [],
        "dict": {"role": "user", "content": "x"},
    }
    messages = {}
    for name, value in bad.items():
        with pytest.raises(InputError) as err:
            RLM(make_config("docker")).invoke(messages=value)
        messages[name] = str(err.value)
    with pytest.raises(InputError):
        RLM(make_config("docker")).invoke("x", messages=[{"role": "user", "content": "x"}])
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert our_containers(tmp_path) == []
    f.observed = "; ".join(f"{k}: {v[:70]}" for k, v in messages.items())


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_images_in_messages(attack_run, scripted, make_config, finding):
    f = finding(
        "bad input", "images in messages",
        tried="messages with a base64 PNG block and a URL image block, then a question",
        expected="the PNG is saved under input/attachments/ byte for byte and named in the transcript; the URL "
                 "image is noted as not embedded (never fetched: no network); the run completes",
    )
    scripted.plan = script_plan(PREAMBLE + textwrap.dedent("""
        F["attachments"] = sorted(os.listdir("input/attachments"))
        F["transcript"] = open("input/prompt.md").read()
        save()
        from llm_client import write_answer
        write_answer("seen")
    """))
    messages = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(PNG).decode()}},
        {"type": "image", "source": {"type": "url", "url": "http://169.254.169.254/latest/meta-data/"}},
        {"type": "text", "text": "What is in these images?"},
    ]}]
    result = RLM(make_config("docker")).invoke(messages=messages)
    assert result.success, result.errors
    found = json.loads((result.workspace_path / "scratch" / "findings.json").read_text())
    assert found["attachments"] == ["image-1.png"]
    assert (result.workspace_path / "input" / "attachments" / "image-1.png").read_bytes() == PNG
    assert "not embedded: url source" in found["transcript"]
    f.observed = (f"attachments {found['attachments']} (identical bytes); URL image noted as not embedded; "
                  f"run {result.stop_reason}")


def test_attachment_names_cannot_escape(scripted, make_config, finding, tmp_path):
    f = finding(
        "bad input", "attachment names with `..` or absolute paths",
        tried="attachments named `../../../escape.txt`, `/etc/passwd`, `a/../../b.txt`, `C:\\\\Windows\\\\x.ini`, "
              "`.bashrc`; and one named `..`",
        expected="each saved under input/attachments/ with a plain sanitised name, nothing outside; `..` "
                 "(no usable characters) is an InputError",
    )
    scripted.plan = script_plan(PREAMBLE + textwrap.dedent("""
        F["attachments"] = sorted(os.listdir("input/attachments"))
        save()
        from llm_client import write_answer
        write_answer("listed")
    """))
    names = ["../../../escape.txt", "/etc/passwd", "a/../../b.txt", "C:\\Windows\\x.ini", ".bashrc"]
    result = RLM(make_config("docker")).invoke("input", question="q",
                                                 attachments={n: f"content of {n}".encode() for n in names})
    assert result.success, result.errors
    listed = json.loads((result.workspace_path / "scratch" / "findings.json").read_text())["attachments"]
    assert listed == sorted(["escape.txt", "passwd", "b.txt", "x.ini", "bashrc"]), listed
    outside = [p for p in tmp_path.rglob("*") if p.name in ("escape.txt", "b.txt", "x.ini", "passwd")
               and "attachments" not in p.parts]
    assert outside == []
    with pytest.raises(InputError) as err:
        RLM(make_config("docker")).invoke("input", attachments={"..": b"x"})
    f.observed = f"saved as {listed}; nothing outside; `..`: {str(err.value)[:80]}"


def test_unknown_config_keys_and_bad_limits(cli_env, tmp_path, finding):
    f = finding(
        "bad input", "unknown config keys, negative limits, sandbox options that do not exist",
        tried="fsrlm.toml with a misspelt key; FSRLM_EXECUTOR asking for `privileged` and `network_mode=host`; "
              "FSRLM_MAX_SUBCALLS_PER_SCRIPT=-1; --timeout -5; executor pids_limit=1 and cpus=0",
        expected="exit code 2 with one line naming the setting, before anything starts; no sandbox option can be "
                 "loosened through configuration",
    )
    (tmp_path / "in.txt").write_text("input\n")
    (tmp_path / "bad.toml").write_text("max_subcals_per_script = 3\n")
    cases = {
        "misspelt key": (["--config", str(tmp_path / "bad.toml")], {}),
        "privileged": ([], {"FSRLM_EXECUTOR": '{"type": "docker", "privileged": true}'}),
        "network_mode": ([], {"FSRLM_EXECUTOR": '{"type": "docker", "network_mode": "host"}'}),
        "negative limit": ([], {"FSRLM_MAX_SUBCALLS_PER_SCRIPT": "-1"}),
        "negative timeout": (["--timeout", "-5"], {}),
        "pids_limit=1": ([], {"FSRLM_EXECUTOR": '{"type": "docker", "pids_limit": 1}'}),
        "cpus=0": ([], {"FSRLM_EXECUTOR": '{"type": "docker", "cpus": 0}'}),
    }
    seen = {}
    for name, (args, extra) in cases.items():
        seen[name] = _clean_error(fsrlm(["run", str(tmp_path / "in.txt"), *args], {**cli_env, **extra}))
    assert "unknown setting" in seen["misspelt key"] and "max_subcals_per_script" in seen["misspelt key"]
    assert "privileged" in seen["privileged"] and "network_mode" in seen["network_mode"]
    assert "FSRLM_MAX_SUBCALLS_PER_SCRIPT" in seen["negative limit"]
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    f.observed = "; ".join(f"{k}: {v.strip()[:60]}" for k, v in seen.items())
