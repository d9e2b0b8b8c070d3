"""Every command the README shows is run, in order, against a fresh project home, as a person pastes it: each
fenced ``bash`` block line by line in one shell session (variables carry over), then every inline
``erasure-pipeline …`` command of the prose. A command exits 0, or 1 with one ``error:`` line where its comment
says it may; none prints a traceback. So a command that crashes (``where`` once did) cannot ship again."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from erasure_pipeline_tests.conftest import PEPPER

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
pytestmark = pytest.mark.slow

NOT_RUN = {
    "pip install": "the installation itself: what .ci/run does before the suite",
    "make test": "the suite this test is part of",
    "make dev": "starts the UI and daemon until stopped: test_dagster_dev and test_ui_browser start them",
    "dg dev": "as make dev",
    "dagster dev": "as make dev",
    "erasure-pipeline serve": "serves until stopped: test_drp starts it as a real server",
}
"""Commands of the README this test does not run, and where they are run instead."""


def readme_commands(text: str) -> tuple[list[str], list[str]]:
    """(every line of the fenced bash blocks, in order; every inline ``erasure-pipeline …`` command of the prose)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.extend(part.strip() for part in line.split(" && "))
    inline = sorted(set(re.findall(r"`(erasure-pipeline(?: [a-z][a-z-]*)*)`", text)))
    return lines, inline


def _code_and_comment(line: str) -> tuple[str, str]:
    """The shell code of a README line, and its comment (after `` # ``, outside quotes)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    try:
        code = " ".join(shlex.quote(t) if not t.startswith(("$", ">")) else t for t in lexer)
    except ValueError:
        code = line
    match = re.search(r"\s#\s(.*)$", line)
    return (line[:match.start()] if match else line).strip() or code, match.group(1) if match else ""


def _run(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=900)


def _check(line: str, done: subprocess.CompletedProcess) -> None:
    _code, comment = _code_and_comment(line)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, (line, output[-3000:])
    if done.returncode == 0:
        return
    assert done.returncode == 1 and "exit 1" in comment, (line, done.returncode, output[-3000:])
    assert re.search(r"^error: ", done.stderr, re.MULTILINE), (line, done.stderr[-2000:])


def _prepare(home: Path) -> None:
    """The files the README's commands name, made as a person would make them."""
    from erasure_pipeline.app import demo

    # The README's demo (--subjects 2000, seed 7): the ids its source system holds. Landing keeps no copy:
    # the demo declares landing.keep_days: 0, so ingested files are gone and the lake seals the ids.
    assert not list((home / "landing").rglob("*.csv"))
    subjects = demo.generate(2000, 7)["subjects"]
    (home / "ids.txt").write_text("\n".join(subjects["subject_id"].iloc[:3]) + "\n")
    policy = (home / "policy.yaml").read_text()
    assert "k_min: 10" in policy
    (home / "new-policy.yaml").write_text(policy.replace("k_min: 10", "k_min: 12"))


def test_every_command_in_the_readme_runs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERASURE_PIPELINE_") and k != "DAGSTER_HOME"}
    env.update({"ERASURE_PIPELINE_HOME": str(home), "ERASURE_PIPELINE_PEPPER": PEPPER, "PATH": f"{bin_dir}:{env.get('PATH', '')}"})
    lines, inline = readme_commands(README.read_text())
    assert any(line.startswith("erasure-pipeline demo") for line in lines) and len(lines) > 20
    ran, prepared = [], False
    for line in lines:
        code, _comment = _code_and_comment(line)
        if any(code.startswith(prefix) for prefix in NOT_RUN):
            continue
        if not prepared and not code.startswith("erasure-pipeline demo"):
            _prepare(home)
            prepared = True
        assign = re.fullmatch(r"([A-Z_]+)=\$\((.*)\)", code)
        done = _run(assign.group(2) if assign else code, env, home)
        _check(line, done)
        if assign:
            env[assign.group(1)] = done.stdout.strip().splitlines()[-1]
            assert re.fullmatch(r"er-[0-9a-f]{20}", env[assign.group(1)]), done.stdout
        ran.append(code)
    for command in inline:
        if command == "erasure-pipeline demo" or command in ran or any(command.startswith(prefix) for prefix in NOT_RUN):
            continue  # the first block's demo built this home; a second one would rebuild it
        if command == "erasure-pipeline":
            command += " --help"  # the tool's name in the prose: what it does is listed by --help
        _check(command, _run(command, env, home))
        ran.append(command)
    check = _run("dg check defs", env, REPO)  # `make check`
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert {"erasure-pipeline where", "erasure-pipeline models", "erasure-pipeline policy show"} <= set(ran)
