"""The README cannot rot: every edgetl command it shows exists, with options the CLI accepts,
and the set-up commands are exactly what CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edgetl.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks() -> list[str]:
    return re.findall(r"```(?:bash|)\n(.*?)```", README, flags=re.S)


def _edgetl_commands() -> list[list[str]]:
    cmds = []
    for block in _code_blocks():
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            line = re.sub(r"^\$ ", "", line)
            for part in re.split(r"&&", line):
                part = part.strip()
                m = re.search(r"(?:^|/)edgetl (.*)$", part)
                if m and not part.startswith("#"):
                    cmds.append(shlex.split(m.group(1)))
    return cmds


COMMANDS = _edgetl_commands()


def test_readme_shows_every_command():
    shown = {c[0] for c in COMMANDS if c}
    assert {"train", "export", "bench", "predict", "models", "demo"} <= shown


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_options_exist(capsys, args):
    code = main([args[0], "--help"])
    help_text = capsys.readouterr().out
    assert code == 0, f"'edgetl {args[0]}' is not a command"
    for tok in args[1:]:
        if tok.startswith("--"):
            opt = tok.split("=", 1)[0]
            assert opt in help_text, f"README uses {opt} which 'edgetl {args[0]} --help' does not list"


def test_setup_commands_match_ci():
    assert "bash scripts/test.sh" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert "edgetl demo" in README.split("## The three commands")[0]


def test_no_placeholders_left():
    assert "PLACEHOLDER" not in README
