"""``python -m embedkit`` runs the CLI (the same as the ``embedkit`` command)."""

from .cli import cli

if __name__ == "__main__":
    cli(prog_name="embedkit")
