"""Every code block of README.md, run as written against the scripted model.

Shell and Python blocks are run in a fresh process, in a folder that holds the
files they name (``huge.log``, ``schema.sql``, ``path/to/huge.log``). The only
things the test changes are the ones a reader changes too: the API key is
replaced by the scripted upstream through environment variables
(``FSRLM_UPSTREAM=compatible``, ``FSRLM_UPSTREAM_BASE_URL``), and the cache and
temp folders are the test's own. Docker is real. A block that cannot run in a
test carries ``<!-- readme-test: skip: REASON -->`` in the README source; they
are listed in ``NOT_RUN`` below, and a new one fails the test until it is added.
TOML blocks are loaded as configuration; ``text`` blocks are not code (diagrams,
listings), except the command-line synopsis, which must match the real options.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from support import log_lines

from fsrlm.config import load_config
from fsrlm.testing.plans import script_plan
from fsrlm.testing.scripted_model import ScriptedModelServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_BLOCK = re.compile(r"(?:^<!-- readme-test: (?P<marker>.*?) -->\n)?^```(?P<lang>\S*)\n(?P<body>.*?)^```$", re.S | re.M)
KINDS = {"bash", "python", "toml", "text"}

# The blocks the README marks as not run in a test, by first line, with the README's reason.
NOT_RUN = {
    'fsrlm bench oolong --data oolong-synth-validation.parquet --max-context-len 131072 --limit 1000 \\':
        "it needs the OOLONG data set and a Ray cluster; tests/benchmarks/test_oolong_ray.py runs the same sweep "
        "on generated rows",
    "make test": "it is the test suite, which holds the test that runs these blocks",
    'ray start --head --port=6379 --resources="$(fsrlm capacity --ray-resources)"        # the head':
        "it starts a Ray cluster on this machine's fixed ports; tests/batch/test_cluster.py runs fsrlm batch "
        "on a real Ray cluster of its own",
    "export ANTHROPIC_API_KEY=...          # only the host-side broker reads it":
        "it downloads the OOLONG data set from a hub and spends real money; tests/benchmarks/test_paper_run.py "
        "runs the same command against a scripted model",
}

# What the scripted model does for any question: chunk the input, one subcall per chunk, write an answer.
README_SCRIPT = '''\
from chunking import chunk_file
from llm_client import append_artifact, llm_batch, write_answer

chunks = list(chunk_file("input/prompt.md", chunk_size=20000))
answers = llm_batch([f"ECHO: chunk {c.index + 1} of {len(chunks)}" for c in chunks])
for c, a in zip(chunks, answers):
    append_artifact({"chunk": c.index, "answer": a})
write_answer(f"scripted answer: read {len(chunks)} chunks, the last said: {answers[-1]}")
'''


def blocks() -> list[tuple[str, str, str | None]]:
    """(kind, body, marker) of every fenced block, in order."""
    return [(m["lang"], m["body"], m["marker"]) for m in _BLOCK.finditer(README.read_text())]


def block_id(kind: str, body: str) -> str:
    first = next((line for line in body.splitlines() if line.strip() and not line.startswith("#")), "")
    return f"{kind}:{first[:40]}"


def runnable(kind: str) -> list[pytest.param]:
    return [pytest.param(body, id=block_id(k, body)) for k, body, marker in blocks() if k == kind and not marker]


def test_every_block_says_what_it_is() -> None:
    found = blocks()
    assert len(found) >= 10
    assert {kind for kind, _, _ in found} <= KINDS, [block_id(k, b) for k, b, _ in found if k not in KINDS]
    opening = README.read_text().count("\n```") // 2
    assert len(found) == opening, "a fenced block the pattern does not see"


def test_the_blocks_not_run_are_exactly_the_listed_ones() -> None:
    marked = {body.strip().splitlines()[0]: marker for _, body, marker in blocks() if marker}
    assert {first: marker.removeprefix("skip: ") for first, marker in marked.items()} == NOT_RUN
    assert all(marker.startswith("skip: ") for marker in marked.values())


@pytest.mark.parametrize("body", runnable("toml"))
def test_toml_blocks_are_valid_configuration(body: str, tmp_path: Path) -> None:
    path = tmp_path / "fsrlm.toml"
    path.write_text(body)
    config = load_config(path, env={})
    assert config.executor.type in ("docker", "remote-docker")


def _synopsis() -> dict[str, set[str]]:
    body = next(b for k, b, _ in blocks() if k == "text" and b.startswith("fsrlm run INPUT ["))
    options: dict[str, set[str]] = {}
    command = ""
    for line in body.splitlines():
        if line.startswith("fsrlm "):
            words = line.split()[1:]
            command = "image build" if words[:2] == ["image", "build"] else words[0]
        options.setdefault(command, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    return options


def _command(path: str) -> click.Command:
    from fsrlm.cli.main import cli

    command: click.Command = cli
    for name in path.split():
        command = command.get_command(click.Context(command), name)  # type: ignore[attr-defined]
    return command


def test_the_synopsis_matches_the_command_line() -> None:
    from fsrlm.cli.main import cli

    synopsis = _synopsis()
    assert set(synopsis) == {"run", "resume", "view", "gc", "image build", "batch", "capacity", "bench", "doctor"}
    for path, written in synopsis.items():
        command = _command(path)
        if isinstance(command, click.Group):  # bench: its subcommands are listed instead
            body = next(b for k, b, _ in blocks() if k == "text" and b.startswith("fsrlm run INPUT ["))
            listed = re.search(r"fsrlm bench (\S+)", body)[1].split("|")  # type: ignore[index]
            assert sorted(listed) == sorted(command.list_commands(click.Context(command))), listed
            continue
        real = {opt for p in command.params if isinstance(p, click.Option)
                for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")} - {"--help"}
        assert written == real, f"fsrlm {path}: README lacks {sorted(real - written)}, has extra {sorted(written - real)}"
    assert set(cli.list_commands(click.Context(cli))) == {p.split()[0] for p in synopsis}


def test_the_project_layout_names_real_folders() -> None:
    body = next(b for k, b, _ in blocks() if k == "text" and b.startswith("fsrlm/ "))
    for line in body.splitlines():
        folder = line.split()[0]
        assert (ROOT / folder).is_dir(), folder


# -- the blocks that run ----------------------------------------------------------------------


@pytest.fixture
def reader(tmp_path: Path, docker_image: str):
    """A reader's folder with the files the README names, and the environment a reader sets."""
    with ScriptedModelServer(script_plan(README_SCRIPT, final_text="Done: the answer is in output/answer.md.")) as model:
        home = tmp_path / "reader"
        (home / "path" / "to").mkdir(parents=True)
        text, _ = log_lines(3000)
        (home / "logs").mkdir()
        for name in ("huge.log", "path/to/huge.log", "logs/a.log", "logs/b.log"):
            (home / name).write_text(text)
        (home / "schema.sql").write_text("CREATE TABLE requests (id INTEGER, host TEXT, status TEXT);\n")
        temp = tmp_path / "t"
        temp.mkdir()
        env = {
            **os.environ,
            "FSRLM_UPSTREAM": "compatible",  # instead of a real key: the scripted upstream
            "FSRLM_UPSTREAM_BASE_URL": model.url,
            "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
            "TMPDIR": str(temp),  # run folders, broker sockets
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # as in an activated venv
        }
        yield home, env, model, temp


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    return proc


def _no_run_folders_left(temp: Path) -> None:
    assert [p.name for p in temp.glob("fsrlm-2*")] == []  # every run succeeded and cleaned up after itself


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("body", runnable("python"))
def test_python_blocks_run_as_written(body: str, reader) -> None:
    home, env, model, temp = reader
    (home / "block.py").write_text(body)
    started = time.monotonic()
    proc = _run([sys.executable, "block.py"], home, env)
    assert "scripted answer: read " in proc.stdout, proc.stdout
    assert model.requests_of("root") and model.requests_of("subcall")  # the runs really went through the broker to the model
    assert time.monotonic() - started < 300
    _no_run_folders_left(temp)


def _mirrored_venv(tmp_path: Path) -> Path:
    """The test's own virtualenv under another name, with a fresh set-up stamp: make sees it set up."""
    venv = tmp_path / "venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if entry.name != ".fsrlm-installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".fsrlm-installed").touch()
    return venv


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("body", runnable("bash"))
def test_shell_blocks_run_as_written(body: str, reader, tmp_path: Path) -> None:
    home, env, model, temp = reader
    for name in ("Makefile", "pyproject.toml", "scripts"):  # the block runs in a checkout
        (home / name).symlink_to(ROOT / name)
    env = {**env, "VENV": str(_mirrored_venv(tmp_path))}
    proc = _run(["bash", "-euo", "pipefail", "-c", body], home, env)
    written = "".join(p.read_text() for p in home.glob("*.jsonl"))  # fsrlm batch writes its answers there
    assert "scripted answer: read " in proc.stdout + written, proc.stdout + proc.stderr
    assert model.requests_of("subcall")
    _no_run_folders_left(temp)
