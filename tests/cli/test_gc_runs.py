"""``fsrlm gc --runs``: old kept run folders go, with their records; young or live ones stay; no link is followed."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import log_lines

from fsrlm import RLM
from fsrlm.cli.main import cli
from fsrlm.prune import find_runs, parse_age
from fsrlm.testing.plans import FinalStep, Plan, count_label_plan

DAY = 86400


@pytest.fixture(autouse=True)
def own_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """gc looks in the temp folder too: give it one of its own, not the machine's."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, args, env=env, prog_name="fsrlm")


def age(run_folder: Path, record: Path, days: float) -> None:
    """Make a run look idle for ``days``: its logs and its host-side record."""
    when = time.time() - days * DAY
    for path in [*(run_folder / "state").iterdir(), record]:
        os.utime(path, (when, when))


@pytest.fixture
def runs(scripted, make_config, tmp_path: Path):
    """Three real kept runs (the real CLI, the broker, the scripted model): two finished, one failed."""
    made = []
    for plan in (count_label_plan(chunk_size=4000), count_label_plan(chunk_size=4000), Plan([FinalStep("no")])):
        scripted.plan = plan
        result = RLM(make_config("local")).invoke(log_lines(300)[0], question="How many lines contain ERROR?")
        made.append(result)
    return made


def env_of(tmp_path: Path) -> dict[str, str]:
    return {"FSRLM_CACHE_DIR": str(tmp_path / "cache"), "FSRLM_WORKSPACE_DIR": str(tmp_path / "runs")}


def record_of(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "cache" / "runs" / f"{run_id}.json"


def test_old_runs_go_young_ones_stay(runs, tmp_path: Path) -> None:
    old, young, failed = runs
    age(old.workspace_path, record_of(tmp_path, old.run_id), 9)
    age(failed.workspace_path, record_of(tmp_path, failed.run_id), 8)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's")
    (old.workspace_path / "scratch" / "link").symlink_to(outside)  # the agent could leave links behind
    readonly = old.workspace_path / "scratch" / "ro"
    readonly.mkdir()
    (readonly / "f").write_text("x")
    readonly.chmod(0o500)
    size = sum(f.stat().st_size for f in old.workspace_path.rglob("*") if f.is_file() and not f.is_symlink())

    dry = invoke(["gc", "--runs", "--older-than", "7d", "--dry-run"], env_of(tmp_path))
    assert dry.exit_code == 0, dry.output
    assert old.workspace_path.exists() and failed.workspace_path.exists()  # a dry run removes nothing
    assert f"would remove {old.workspace_path}" in dry.stdout

    result = invoke(["gc", "--runs", "--older-than", "7d", "--json"], env_of(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(r["path"] for r in report["removed"]) == sorted([str(old.workspace_path),
                                                                   str(failed.workspace_path)])
    assert report["kept"] == [str(young.workspace_path)]
    assert report["freed_bytes"] >= size > 0
    assert not old.workspace_path.exists() and not failed.workspace_path.exists()
    assert young.workspace_path.is_dir()
    assert not record_of(tmp_path, old.run_id).exists() and record_of(tmp_path, young.run_id).exists()
    assert (outside / "keep.txt").read_text() == "the user's"  # the link was removed, not followed


def test_a_run_that_may_still_be_going_is_never_removed(runs, tmp_path: Path) -> None:
    going = runs[0]
    record = record_of(tmp_path, going.run_id)
    state = json.loads(record.read_text())
    state["stop_reason"] = None  # as while it runs: the record gets its stop reason at the end
    record.write_text(json.dumps(state))
    result = invoke(["gc", "--runs", "--older-than", "0", "--json"], env_of(tmp_path))
    assert result.exit_code == 0, result.output
    removed = {r["path"] for r in json.loads(result.stdout)["removed"]}
    assert str(going.workspace_path) not in removed and going.workspace_path.is_dir()
    assert removed == {str(r.workspace_path) for r in runs[1:]}
    # once it has been silent for longer than timeout_seconds, it cannot be running any more
    age(going.workspace_path, record, 1)
    result = invoke(["gc", "--runs", "--older-than", "0"], env_of(tmp_path))
    assert not going.workspace_path.exists(), result.output


def test_runs_in_the_temp_folder_and_orphan_records(scripted, make_config, tmp_path: Path,
                                                    own_temp_folder: Path) -> None:
    temp = own_temp_folder  # runs without workspace_dir go to the temp folder
    scripted.plan = count_label_plan(chunk_size=4000)
    result = RLM(make_config("local", workspace_dir=None)).invoke(log_lines(300)[0], question="Count ERROR")
    assert result.workspace_path.parent.parent == temp and result.workspace_path.parent.name.startswith("fsrlm-")
    record = record_of(tmp_path, result.run_id)
    (tmp_path / "cache" / "runs" / "gone.json").write_text(json.loads(json.dumps(record.read_text())).replace(
        str(result.workspace_path), str(tmp_path / "nowhere")).replace(result.run_id, "gone"))
    record.unlink()  # found through the temp folder even without its record
    for path in [*(result.workspace_path / "state").iterdir(), tmp_path / "cache" / "runs" / "gone.json"]:
        os.utime(path, (time.time() - 3 * DAY,) * 2)
    found = find_runs(tmp_path / "cache", [])
    assert [r.path for r in found] == [result.workspace_path]
    out = invoke(["gc", "--runs", "--older-than", "2d"], {"FSRLM_CACHE_DIR": str(tmp_path / "cache")})
    assert out.exit_code == 0, out.output
    assert not result.workspace_path.exists() and not result.workspace_path.parent.exists()  # its temp parent too
    assert not (tmp_path / "cache" / "runs" / "gone.json").exists()
    assert "1 host-side record of runs whose folder is gone" in out.stderr


def test_runs_needs_an_age_and_ages_read_like_a_person_writes_them(tmp_path: Path) -> None:
    result = invoke(["gc", "--runs"], env_of(tmp_path))
    assert result.exit_code == 2 and "--older-than AGE (e.g. 7d)" in result.stderr
    bad = invoke(["gc", "--runs", "--older-than", "a week"], env_of(tmp_path))
    assert bad.exit_code == 2 and "is not an age" in bad.stderr
    assert [parse_age(a) for a in ("90", "90s", "30m", "12h", "7d", "2w", "1.5h")] == [
        90, 90, 1800, 43200, 7 * DAY, 14 * DAY, 5400]
