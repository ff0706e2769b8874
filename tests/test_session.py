"""Resume: the CLI's saved system prompts are removed from its transcript, the conversation kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsrlm.errors import WorkspaceError
from fsrlm.session import drop_saved_system_prompts

SID = "9dc1bc3b-8987-4ff5-bbc8-40afc2655867"


def _transcript(root: Path, entries: list, project: str = "-workspace") -> Path:
    path = root / ".agent" / "projects" / project / f"{SID}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n")
    return path


def snapshot(uuid: str, parent: str | None) -> dict:
    return {"type": "attachment", "uuid": uuid, "parentUuid": parent,
            "attachment": {"type": "prompt_snapshot", "systemPrompt": ["cli", "INJECTED"]}}


def test_snapshots_removed_and_the_chain_relinked(tmp_path: Path) -> None:
    path = _transcript(tmp_path, [
        {"type": "user", "uuid": "u1", "parentUuid": None, "message": {"content": "hi"}},
        snapshot("s1", "u1"), snapshot("s2", "s1"),
        {"type": "assistant", "uuid": "a1", "parentUuid": "s2", "message": {"content": "ok"}},
        "not json",
        {"type": "attachment", "uuid": "x", "parentUuid": "a1", "attachment": {"type": "other"}},
    ])
    assert drop_saved_system_prompts(tmp_path, SID) == 2
    lines = path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["uuid"] for e in entries] == ["u1", "a1", "x"]
    assert entries[1]["parentUuid"] == "u1" and entries[2]["parentUuid"] == "a1"
    assert "not json" in lines and "INJECTED" not in path.read_text()
    assert drop_saved_system_prompts(tmp_path, SID) == 0  # nothing left: the file is not rewritten


def test_links_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps(snapshot("s", None)) + "\n")
    (tmp_path / "ws" / ".agent" / "projects" / "p").mkdir(parents=True)
    (tmp_path / "ws" / ".agent" / "projects" / "p" / f"{SID}.jsonl").symlink_to(outside)
    (tmp_path / "ws" / ".agent" / "projects" / "q").symlink_to(tmp_path)
    assert drop_saved_system_prompts(tmp_path / "ws", SID) == 0
    assert "INJECTED" in outside.read_text()


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200])
def test_a_bad_session_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(WorkspaceError, match="invalid session id"):
        drop_saved_system_prompts(tmp_path, bad)
