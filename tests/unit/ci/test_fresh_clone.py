"""CI runs the suite in a fresh clone of the committed state (.ci/run -> .ci/in-fresh-clone)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / ".ci" / "in-fresh-clone"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A small repository with the script committed, one committed file and local-only files."""
    repo = tmp_path / "work"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(SCRIPT, repo / ".ci" / "in-fresh-clone")
    (repo / "committed.txt").write_text("v1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "committed.txt").write_text("v2, not committed\n")
    (repo / "untracked.txt").write_text("only here\n")
    return repo


def _run(repo: Path, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo / ".ci" / "in-fresh-clone"), "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_the_command_runs_in_a_clone_of_head_outside_the_working_tree(repo, tmp_path):
    script = (
        "pwd -P; git rev-parse HEAD; cat committed.txt; ls; echo PYTHONPATH=${PYTHONPATH-unset}"
    )
    done = _run(repo, script, PYTHONPATH=str(repo), TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    cwd, head, content, *listing, pythonpath = done.stdout.splitlines()
    assert not Path(cwd).is_relative_to(repo.resolve())
    assert head == _git(repo, "rev-parse", "HEAD")
    assert content == "v1"  # the committed state, not the edited file
    assert "untracked.txt" not in listing and "committed.txt" in listing
    assert pythonpath == "PYTHONPATH=unset"
    assert "uncommitted changes" in done.stderr
    assert not Path(cwd).exists()  # the clone is removed afterwards


@pytest.mark.parametrize("status", [1, 5])
def test_the_commands_status_is_the_scripts(repo, status):
    assert _run(repo, f"exit {status}").returncode == status


def test_test_artifacts_are_copied_back(repo):
    done = _run(repo, "mkdir test-artifacts && echo shot > test-artifacts/page.png")
    assert done.returncode == 0, done.stderr
    assert (repo / "test-artifacts" / "page.png").read_text() == "shot\n"


def test_ci_runs_make_test_in_the_fresh_clone():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert shlex.split(commands[-1]) == ["exec", ".ci/in-fresh-clone", "make", "test"]
    assert os.access(ROOT / ".ci" / "run", os.X_OK) and os.access(SCRIPT, os.X_OK)


def test_make_test_installs_every_extra_and_each_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', (ROOT / "Makefile").read_text())
    assert extras is not None and set(extras.group(1).split(",")) == set(
        project["optional-dependencies"]
    )
    assert {"dev", "trainer", "opacus"} <= set(project["optional-dependencies"])
    pinned = {
        re.split(r"[=<>\[]", line)[0].lower().replace("_", "-")
        for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for requirement in [
        *project["dependencies"],
        *sum(project["optional-dependencies"].values(), []),
    ]:
        name = re.split(r"[=<>\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in pinned, f"{requirement} is not pinned in requirements/constraints.txt"
