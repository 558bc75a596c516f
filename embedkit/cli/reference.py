"""The CLI reference (every command's --help) as Markdown.

``python -m embedkit.cli.reference`` prints it; ``python -m embedkit.cli.reference README.md`` rewrites the block
between the README's markers. A test regenerates it, so the README's reference cannot drift from the CLI.
"""

from __future__ import annotations

from typing import Any

import click

from . import cli

WIDTH = 100


def _commands(group: click.Group, prefix: list[str]):
    ctx = click.Context(group, info_name="embedkit")
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, [*prefix, name])
        else:
            yield [*prefix, name], command


def reference() -> str:
    """Markdown with one fenced ``--help`` block per command, in alphabetical order."""
    parts = []
    for path, command in _commands(cli, []):
        settings: dict[str, Any] = {
            "max_content_width": WIDTH,
            "terminal_width": WIDTH,
            "help_option_names": ["-h", "--help"],
        }
        parent = click.Context(cli, info_name="embedkit", **settings)
        ctx = click.Context(command, info_name=" ".join(path), parent=parent, **settings)
        parts.append(f"#### `embedkit {' '.join(path)}`\n\n```text\n{command.get_help(ctx)}\n```\n")
    return "\n".join(parts)


START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def write_into(path: str) -> None:
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    Path(path).write_text(f"{head}{START}\n{reference()}{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        write_into(sys.argv[1])
    else:
        print(reference(), end="")
