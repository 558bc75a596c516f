"""The README stays true: its CLI reference is the real --help, and every command it shows exists with the
options it uses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from embedkit.cli import cli
from embedkit.cli.reference import END, START, reference

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_cli_reference_section_is_generated_from_the_commands():
    block = README.split(START)[1].split(END)[0].strip()
    assert block == reference().strip(), "regenerate: python -m embedkit.cli.reference README.md"


def _shell_commands():
    """Every `embedkit ...` command line in the README's bash blocks (continuation lines joined)."""
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("embedkit "):
                yield line


def test_every_readme_command_exists_with_real_options():
    commands = list(_shell_commands())
    assert len(commands) >= 10
    for line in commands:
        words = shlex.split(line)[1:]
        command: click.Command = cli
        while isinstance(command, click.Group):
            name = words.pop(0)
            # get_command, not .commands: the top-level group loads its commands' modules lazily (#23).
            sub = command.get_command(click.Context(command), name)
            assert sub is not None, f"{line}: no command {name!r}"
            command = sub
        known = {
            opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])
        }
        for word in words:
            if word.startswith("-") and not re.fullmatch(r"-\d+", word):
                assert word.split("=")[0] in known, f"{line}: {word} is not an option of {command.name}"


def test_the_two_setup_commands_are_the_ci_scripts():
    assert "bash .ci/main.sh" in README and "bash .ci/test.sh" in README
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "bash .ci/test.sh" in ci
