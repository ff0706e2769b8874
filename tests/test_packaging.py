"""The wheel carries everything a user needs, under one import package: ``fsrlm``.

The repository's top-level folders map onto subpackages of ``fsrlm`` (pyproject's
``[tool.setuptools.package-dir]``); the installed copy must have them all, and no other
top-level name, and must run a job on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# repository folder -> where it lands in site-packages
PACKAGES = {
    "fsrlm": "fsrlm",
    "executors": "fsrlm/executors",
    "tools": "fsrlm/tools",
    "benchmarks": "fsrlm/benchmarks",
    "workspace_template": "fsrlm/workspace_template",
    "images": "fsrlm/images",
}
REQUIRED = (
    "fsrlm/__init__.py",
    "fsrlm/cli/main.py",
    "fsrlm/executors/__init__.py",
    "fsrlm/executors/registry.py",
    "fsrlm/tools/workspace/llm_client.py",
    "fsrlm/tools/workspace/chunking.py",
    "fsrlm/tools/relay.py",
    "fsrlm/tools/mux.py",
    "fsrlm/workspace_template/.claude/CLAUDE.md",
    "fsrlm/workspace_template/.claude/skills/rlm/SKILL.md",
    "fsrlm/images/sandbox/Dockerfile",
    "fsrlm/benchmarks/oolong.py",
)
SKIP_DIRS = {".venv", ".git", "build", "dist", "tests", "__pycache__", ".pytest_cache", ".ruff_cache", "runs"}

pytestmark = pytest.mark.slow


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def source_files() -> set[str]:
    """Every file of the shipped folders in the source tree, as its path in site-packages."""
    found: set[str] = set()
    for folder, installed in PACKAGES.items():
        for dirpath, dirnames, filenames in os.walk(REPO / folder):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "executors", "tools", "benchmarks")
                           or folder != "fsrlm"]
            for name in filenames:
                if not name.endswith((".pyc", ".pyo")):
                    rel = (Path(dirpath) / name).relative_to(REPO / folder).as_posix()
                    found.add(f"{installed}/{rel}")
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A new folder with an __init__.py must be added to [tool.setuptools] packages, or it is not shipped."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, installed in PACKAGES.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).as_posix()
            found.add(installed.replace("/", ".") + ("" if rel == "." else "." + rel.replace("/", ".")))
    assert found <= listed, sorted(found - listed)


def build_wheel(tmp_path: Path) -> Path:
    # Build from a copy so the source tree gets no build/ or egg-info (other work may be running in it).
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=lambda _d, names: [
        n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")])
    out = tmp_path / "dist"
    # Without isolation when this environment already has the build requirements (fast, offline);
    # otherwise pip fetches them into an isolated environment.
    fast = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)])
    if fast.returncode != 0:
        isolated = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)])
        assert isolated.returncode == 0, f"wheel build failed:\n{fast.stdout[-2000:]}\n{isolated.stdout[-3000:]}" \
                                         f"\n{isolated.stderr[-3000:]}"
    [wheel] = out.glob("fsrlm-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fresh venv, its site-packages) with only the built wheel installed (no dependencies)."""
    tmp = tmp_path_factory.mktemp("packaging")
    wheel = build_wheel(tmp)
    venv = tmp / "fresh-venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
               "--disable-pip-version-check", str(wheel)])
    assert pip.returncode == 0, pip.stdout + pip.stderr
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    return venv, Path(purelib.stdout.strip())


def test_wheel_has_one_top_level_package(installed: tuple[Path, Path]) -> None:
    _, site = installed
    [dist_info] = site.glob("fsrlm-*.dist-info")
    [record] = [dist_info / "RECORD"]
    top = {line.split("/", 1)[0].split(",", 1)[0] for line in record.read_text().splitlines()
           if line and not line.startswith("../")}  # ../../../bin/fsrlm: the console script
    assert top == {"fsrlm", dist_info.name}, top
    names = sorted(p.name for p in site.iterdir() if p.name not in ("__pycache__",) and not p.name.endswith(".pth"))
    assert names == ["fsrlm", dist_info.name], names
    missing = [rel for rel in REQUIRED if not (site / rel).is_file()]
    assert missing == []


def test_wheel_has_every_source_file_of_the_packages(installed: tuple[Path, Path]) -> None:
    _, site = installed
    missing = sorted(rel for rel in source_files() if not (site / rel).is_file())
    assert missing == [], "fix [tool.setuptools.package-data] in pyproject.toml"


def test_console_script_installed(installed: tuple[Path, Path]) -> None:
    venv, site = installed
    script = venv / "bin" / "fsrlm"
    assert script.is_file() and os.access(script, os.X_OK)
    assert "fsrlm.cli.main" in script.read_text()
    [entry_points] = site.glob("fsrlm-*.dist-info/entry_points.txt")
    assert "fsrlm = fsrlm.cli.main:main" in entry_points.read_text()


def test_installed_package_creates_a_workspace(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """The installed copy (not the source tree) finds its template and tools through package data."""
    venv, site = installed
    code = (
        "import fsrlm.workspace as w; from pathlib import Path; "
        f"assert Path(w.__file__).is_relative_to({str(site)!r}), w.__file__; "
        f"ws = w.Workspace.create('pkg', Path({str(tmp_path)!r})); "
        "assert (ws.root / '.claude/CLAUDE.md').is_file(); "
        "assert (ws.root / '.claude/skills/rlm/SKILL.md').is_file(); "
        "assert (ws.root / 'tools/llm_client.py').is_file() and (ws.root / 'tools/chunking.py').is_file(); "
        "assert not (ws.root / 'tools/relay.py').exists() and not (ws.root / 'tools/mux.py').exists(); print('ok')"
    )
    # The dependencies (pydantic, ...) come from the test environment; fsrlm itself from the fresh venv.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    proc = run([str(venv / "bin" / "python"), "-c", code], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_installed_copy_runs_a_scripted_job(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """`make demo`'s job (the real CLI, the broker, a scripted model) run by the installed copy alone."""
    venv, site = installed
    code = (
        "import sys, fsrlm, fsrlm.executors, fsrlm.tools; from pathlib import Path; "
        f"site = Path({str(site)!r}); "
        "assert all(Path(m.__file__).is_relative_to(site) for m in (fsrlm, fsrlm.executors, fsrlm.tools)); "
        "from fsrlm.demo import main; sys.exit(main())"
    )
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "FSRLM_EXECUTOR": "local"}
    proc = run([str(venv / "bin" / "python"), "-c", code], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("success=True") == 2, proc.stdout
