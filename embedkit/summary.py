"""The one way a stage says what it did: every result object has ``summary_lines()``.

The CLI, the pipelines, the examples and the benchmarks print a stage's outcome through this protocol only, so a
new stage needs no printing code of its own and a summary reads the same wherever it is shown.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Summarised(Protocol):
    """A result that can tell a person what happened, one line per fact, no trailing newlines."""

    def summary_lines(self) -> list[str]: ...


def summary_text(result: Summarised) -> str:
    """The summary as one block of text, as the CLI prints it."""
    return "\n".join(result.summary_lines())
