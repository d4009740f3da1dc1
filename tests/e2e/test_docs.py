"""The README and every page of the docs site run as written, against a real server.

Two sessions: the README alone (its quickstart starts from an empty ledger), then the pages of
``docs/`` in the order of ``mkdocs.yml``'s navigation, one after the other (a tutorial may use
what an earlier page created, as a reader following the site does). Which fenced blocks run (all
of them, top to bottom, in ONE bash session per group, so variables and the ledger's state carry
over from block to block as in a reader's terminal):

* every ```console block: each line starting with ``$ `` is a command (a trailing ``\\`` continues
  it on the next line); the lines after it, up to the next command, are its expected output
  (stdout and stderr together). An expected line ``...`` matches any number of lines, and
  ``...`` inside a line matches any text, for values that vary (ids, times, tokens). A command
  must exit 0 unless the next command is ``echo $?``, which then shows its status. Put
  ``<!-- readme-test: skip -->`` on the line before a console block that must not run.
* a ```bash block preceded by ``<!-- readme-test -->``: run as it is; it must exit 0.
* a ```python block preceded by ``<!-- readme-test -->``: run by this interpreter; it must exit 0.

The session runs from the repository root with the quickstart's variables set to the test's
server: ``DPLEDGER_URL`` (its URL), ``DPLEDGER_TOKEN`` (an admin token) and
``DPLEDGER_DATABASE_URL`` (its database, for the admin commands), with this interpreter's scripts
(``dpledger``) first on PATH. Tested blocks should write only under ``/tmp``.

``mkdocs build --strict`` builds the site here too (every page in the navigation, no broken link).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ADMIN_TOKEN
from tests.integration.server import Server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RUN_MARK = "<!-- readme-test -->"
SKIP_MARK = "<!-- readme-test: skip -->"
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Command:
    """One command of a tested block and what it should print (None: not compared)."""

    line: int  # line of the command in its page, for failure messages
    source: str
    expected: list[str] | None
    status_shown: bool = False  # the next command is `echo $?`


@dataclass(frozen=True)
class Block:
    """A fenced block of the README."""

    language: str
    line: int  # line of the opening fence in its page
    body: list[str]
    marker: str | None  # the HTML comment on the line before the fence, if any


def read_blocks(text: str) -> list[Block]:
    """Return every fenced block with its language and the marker before it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = before if before.startswith("<!-- readme-test") else None
        blocks.append(Block(opening.group(1), i + 1, lines[i + 1 : end], marker))
        i = end + 1
    return blocks


def is_complete(source: str) -> bool:
    """Whether bash reads ``source`` as complete (no open quote, loop or trailing backslash)."""
    if source.endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", source], capture_output=True).returncode == 0


def console_commands(block: Block) -> list[Command]:
    """Split a console block into commands (``$ ``-lines, with continuations) and outputs."""
    commands: list[tuple[int, list[str], list[str]]] = []
    lines = iter(enumerate(block.body, start=block.line + 1))
    for number, line in lines:
        if line.startswith("$ "):
            source = [line[2:]]
            while not is_complete("\n".join(source)):
                following = next(lines, None)
                if following is None:
                    raise AssertionError(f"README line {number}: the command never ends")
                source.append(following[1])
            commands.append((number, source, []))
        elif commands:
            commands[-1][2].append(line)
        elif line.strip():
            raise AssertionError(f"README line {number}: output before any `$ ` command")
    result = []
    for k, (number, source, expected) in enumerate(commands):
        shown = k + 1 < len(commands) and commands[k + 1][1] == ["echo $?"]
        result.append(Command(number, "\n".join(source), expected, status_shown=shown))
    return result


def commands_to_run(text: str) -> list[Command]:
    """Every command a page asks to test, in order."""
    commands: list[Command] = []
    for block in read_blocks(text):
        if block.language == "console" and block.marker != SKIP_MARK:
            commands.extend(console_commands(block))
        elif block.language == "bash" and block.marker == RUN_MARK:
            commands.append(Command(block.line, "\n".join(block.body), None))
        elif block.language == "python" and block.marker == RUN_MARK:
            script = "\n".join(block.body)
            source = f"{sys.executable} - <<'README_PYTHON'\n{script}\nREADME_PYTHON"
            commands.append(Command(block.line, source, None))
    return commands


_FULL_PRECISION = re.compile(r"\d+\.\d+(?:[eE][-+]?\d+)?")


def _last_digits_hidden(text: str) -> str:
    """Round full-precision floats (12+ digits) to 10 significant digits.

    A float printed with all its digits can differ in the last one or two between CPUs (vector
    instructions sum in another order); what the README promises is the value, not its last ulp.
    """

    def rounded(match: re.Match[str]) -> str:
        number = match.group(0)
        digits = sum(ch.isdigit() for ch in number.split("e")[0].split("E")[0])
        return f"{float(number):.10g}" if digits >= 12 else number

    return _FULL_PRECISION.sub(rounded, text)


def output_matches(expected: list[str], actual: str) -> bool:
    """Whether ``actual`` matches ``expected`` line by line, with ``...`` wildcards (floats
    printed with 12+ digits are compared to 10 significant digits)."""
    expected = [_last_digits_hidden(line) for line in expected]
    actual = _last_digits_hidden(actual)
    pattern = []
    for line in expected:
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            parts = (re.escape(part) for part in line.rstrip().split("..."))
            pattern.append(r"[^\n]*".join(parts) + r"[ \t]*\n")
    lines = [line.rstrip() for line in actual.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while expected and not expected[-1].strip():
        expected = expected[:-1]
        pattern.pop()
    return re.fullmatch("".join(pattern), "".join(f"{line}\n" for line in lines)) is not None


def session_script(commands: list[Command]) -> str:
    """One bash script running every command, each between markers that carry its status."""
    parts = ["exec 2>&1", "__readme_status=0"]
    for k, command in enumerate(commands):
        parts += [
            f"printf '\\n@@readme {k} start@@\\n'",
            '( exit "$__readme_status" )',  # so that `echo $?` shows the previous command's
            command.source,
            "__readme_status=$?",
            f"printf '\\n@@readme {k} end %d@@\\n' \"$__readme_status\"",
        ]
    return "\n".join(parts) + "\n"


def split_outputs(log: str, count: int) -> list[tuple[str, int] | None]:
    """Each command's (output, status), or None for commands the session never reached."""
    found: list[tuple[str, int] | None] = []
    for k in range(count):
        match = re.search(
            rf"\n@@readme {k} start@@\n(.*?)\n@@readme {k} end (\d+)@@\n", log, flags=re.S
        )
        found.append(None if match is None else (match.group(1), int(match.group(2))))
    return found


# --- the harness's own behaviour --------------------------------------------------------------


def test_the_extractor_reads_console_bash_and_python_blocks():
    text = "\n".join([
        "```console", "$ echo one \\", "    two", "one two", "$ false", "$ echo $?", "1",
        "$ for x in 1 2; do", "    echo 'a", "  b'; done", "a", "...", "```",
        "<!-- readme-test: skip -->", "```console", "$ make run", "```",
        "```bash", "not run", "```",
        "<!-- readme-test -->", "", "```bash", "export X=1", "```",
        "<!-- readme-test -->", "```python", "print(1)", "```",
    ])  # fmt: skip
    commands = commands_to_run(text)
    sources = [c.source for c in commands]
    assert (
        sources[:3] == ["echo one \\\n    two", "false", "echo $?"] and sources[4] == "export X=1"
    )
    assert commands[0].expected == ["one two"] and commands[1].status_shown
    assert commands[3].source == "for x in 1 2; do\n    echo 'a\n  b'; done"
    assert commands[3].expected == ["a", "..."]
    assert commands[4].expected is None and commands[5].source.endswith("print(1)\nREADME_PYTHON")
    assert len(commands) == 6


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (["a", "b"], "a\nb\n", True),
        (["a", "b"], "a\nc\n", False),
        (['{"epsilon": 2.9966459113775312}'], '{"epsilon": 2.996645911377529}\n', True),
        (['{"epsilon": 2.9966459113775312}'], '{"epsilon": 2.996645921377529}\n', False),
        (["eps 2.9966"], "eps 2.9967\n", False),
        (["a"], "a\nb\n", False),
        (["a", "...", "d"], "a\nb\nc\nd\n", True),
        (["a", "...", "d"], "a\nd\n", True),
        (['"epsilon": 1.58...,'], '"epsilon": 1.5896031,\n', True),
        (['"epsilon": 1.58...,'], '"epsilon": 2.5896031,\n', False),
        ([], "", True),
        ([], "unexpected\n", False),
    ],
)
def test_output_matching(expected, actual, ok):
    assert output_matches(expected, actual) is ok


def test_the_session_carries_status_and_state_from_command_to_command(tmp_path):
    commands = [Command(1, "X=41; false", None), Command(2, "echo $?", ["1"]),
                Command(3, "echo $((X + 1))", ["42"])]  # fmt: skip
    script = tmp_path / "s.sh"
    script.write_text(session_script(commands))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
    assert split_outputs(done.stdout, 3) == [("", 1), ("1\n", 0), ("42\n", 0)]


# --- the pages themselves ---------------------------------------------------------------------


def nav_pages() -> list[Path]:
    """The pages of ``mkdocs.yml``'s navigation, in order."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    found: list[Path] = []

    def walk(entry: object) -> None:
        if isinstance(entry, str):
            found.append(DOCS / entry)
        elif isinstance(entry, list):
            for item in entry:
                walk(item)
        elif isinstance(entry, dict):
            for item in entry.values():
                walk(item)

    walk(config["nav"])
    return found


def test_every_page_is_in_the_navigation():
    pages = {path.resolve() for path in DOCS.rglob("*.md")}
    assert pages == {path.resolve() for path in nav_pages()}


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "reference" / "http-api" / "index.html").read_text()
    assert "/v1/runs/{run_id}/epochs" in api  # the operations rendered from openapi.yaml
    python = (tmp_path / "site" / "reference" / "python-api" / "index.html").read_text()
    assert "calibrate_noise_multiplier" in python and "LedgerClient" in python


def _commands_of(pages: list[Path]) -> list[tuple[str, Command]]:
    found = []
    for page in pages:
        name = page.relative_to(ROOT).as_posix()
        found += [(name, command) for command in commands_to_run(page.read_text())]
    return found


def _run_session(pages: list[Path], directory: Path, timeout: int) -> list[str]:
    """Run every tested command of ``pages`` in one session on a fresh server; the failures."""
    commands = _commands_of(pages)
    assert len(commands) >= 5, f"{[p.name for p in pages]} lost their tested examples"
    assert shutil.which("curl") is not None, "the examples need curl"
    server = Server(f"sqlite:///{directory / 'docs.db'}", directory / "server.log").start()
    try:
        env = {
            **os.environ,
            "DPLEDGER_URL": server.url,
            "DPLEDGER_TOKEN": ADMIN_TOKEN,
            "DPLEDGER_DATABASE_URL": server.database_url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "COLUMNS": "100",
        }
        script = directory / "session.sh"
        script.write_text(session_script([command for _, command in commands]))
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", str(script)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        server.stop()
    failures = []
    outcomes = split_outputs(done.stdout, len(commands))
    for (page, command), outcome in zip(commands, outcomes, strict=True):
        where = f"{page} line {command.line}: {command.source.splitlines()[0]}"
        if outcome is None:
            failures.append(f"{where}\n  never ran (the session ended early)")
            break
        output, status = outcome
        if status != 0 and not command.status_shown:
            failures.append(f"{where}\n  exited {status}:\n{output}")
        elif command.expected is not None and not output_matches(command.expected, output):
            shown = "\n".join(command.expected)
            failures.append(f"{where}\n  expected:\n{shown}\n  got:\n{output}")
    return failures


@pytest.mark.slow  # about 15 s of CPU: two short `dpledger train` runs import torch
def test_readme_examples_run_as_written(tmp_path):
    failures = _run_session([README], tmp_path, timeout=180)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow  # about a minute of CPU: trainings, audits and accounting on every page
def test_every_page_of_the_site_runs_as_written(tmp_path):
    failures = _run_session(nav_pages(), tmp_path, timeout=480)
    assert not failures, "\n\n".join(failures)
