"""Nested runs (``rlm_query``): the host creates them where no sandbox can write, and mounts what it created.

Every nested run is a real one: the root agent's script calls ``rlm_query``; the
broker starts a second run (its own workspace, broker and container) whose agent
follows the same scripted plan, so the same script runs again at depth 1 and
plays the nested agent's part of the attack.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fsrlm.executors.docker.handback import sandbox_user

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# The parent plants the redirection, then asks for a nested run; the nested agent (depth 1)
# writes what an attacker would like to find on the host.
NESTED_LINK = """
import threading, time
from llm_client import rlm_query, write_answer
if os.environ.get("FSRLM_DEPTH") == "1":
    os.makedirs(".vim/pack/evil/start", exist_ok=True)
    open(".vim/pack/evil/start/plugin.vim", "w").write("pwned")
    F["child_workspace"] = sorted(os.listdir("."))
    save()
    write_answer("child was here")
    raise SystemExit
if VARIANT == "nested is a link":
    import shutil
    shutil.rmtree("nested", ignore_errors=True)
    os.symlink(HOST_DIR, "nested")
elif VARIANT == "nested/<id> swapped":
    os.makedirs("nested", exist_ok=True)
    def swap():
        # Watch for the host's new run folder; once it is handed to the sandbox's uid (the host is about to
        # start the nested container), replace it by a link to a host folder.
        deadline = time.time() + 60
        while time.time() < deadline and not F.get("swapped"):
            for name in os.listdir("nested"):
                path = os.path.join("nested", name)
                if (not os.path.islink(path) and not name.endswith(".orig")
                        and os.stat(path).st_uid == os.getuid()):
                    try:
                        os.rename(path, path + ".orig")
                        os.symlink(HOST_DIR, path)
                        F["swapped"] = name
                    except OSError as e:
                        F.setdefault("swap_errors", []).append(str(e))
            time.sleep(0.0005)
    watcher = threading.Thread(target=swap, daemon=True)
    watcher.start()
try:
    F["answer"] = rlm_query("What is in the context?", "a small context")
except Exception as e:
    F["answer"] = f"{type(e).__name__}: {e}"
F["nested_listing"] = sorted(os.listdir("nested")) if os.path.isdir("nested") else None
save()
write_answer(F["answer"])
"""


@pytest.mark.parametrize("variant", ["nested is a link", "nested/<id> swapped"])
def test_nested_runs_are_created_where_the_sandbox_cannot_write(attack_run, finding, tmp_path, variant):
    f = finding(
        "host filesystem", f"nested runs in a host folder: {variant}",
        tried=("the root agent replaces `nested/` in its workspace with a symlink to a host folder, then calls "
               "rlm_query" if variant == "nested is a link" else
               "the root agent calls rlm_query while a thread watches `nested/` and swaps the new run folder "
               "for a symlink to a host folder (one the sandbox's uid owns) once the host hands it to the sandbox's uid (just before the "
               "nested container starts)")
              + "; the nested agent writes `.vim/pack/evil/start/plugin.vim` into its workspace",
        expected="nothing is created in the host folder; the nested run lives in a folder beside the parent's "
                 "run folder that no sandbox can reach, and the result and the viewer point to it",
    )
    host = tmp_path / "host-dir"
    host.mkdir()
    # A folder of the user the sandbox runs as (the orchestrator's own uid when it is not root).
    os.chown(host, *sandbox_user())
    script = f"HOST_DIR = {str(host)!r}\nVARIANT = {variant!r}\n" + NESTED_LINK
    run = attack_run(script, max_depth=1)
    result = run.result
    created = _tree(host)
    f.observed = f"host folder after the run: {created or 'empty'}"
    assert created == [], created
    assert result.success, (result.stop_reason, result.errors)
    assert run.findings["answer"] == "child was here", run.findings
    # The nested run exists, host-owned, beside the parent; the result points to it.
    assert len(result.nested) == 1, result.nested
    child = result.nested[0]
    assert child.workspace_path is not None
    assert child.workspace_path.parent == result.workspace_path.parent / f"{result.workspace_path.name}.nested"
    assert (child.workspace_path / ".vim/pack/evil/start/plugin.vim").read_text() == "pwned"
    assert (child.workspace_path / "output/answer.md").read_text().strip() == "child was here"
    nested_dir = child.workspace_path.parent
    assert not nested_dir.is_symlink() and nested_dir.stat().st_uid == os.geteuid()
    assert nested_dir.stat().st_mode & 0o077 == 0
    f.observed += (f"; nested run in <run>.nested/{child.run_id} (mode {oct(nested_dir.stat().st_mode & 0o777)}, "
                   f"owner uid {nested_dir.stat().st_uid}), answer {run.findings['answer']!r}")
