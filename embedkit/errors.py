"""Typed errors. The library raises these; the CLI turns them into clean messages and exit codes.

Exit codes (documented in the README):
    0  success (bad rows, if any, are recorded in the output and counted in the summary)
    1  unexpected internal error (a bug: please report it)
    2  usage: an unknown option value or an invalid combination of options
    3  input: a missing/empty/corrupt input file, a missing column, a bad row in --strict mode
    4  model: the model could not be loaded
    5  output: the output exists, its directory is missing or read-only, the disk is full
    6  incompatible: features, an index or a resume state made with other extraction settings
    7  busy: another embedkit process is writing the same output (pass --wait to wait for it)
"""

from __future__ import annotations


class EmbedkitError(Exception):
    """Base class of every error embedkit raises on purpose."""

    exit_code = 1


class ConfigError(EmbedkitError, ValueError):
    """An option has an unknown value or options contradict each other."""

    exit_code = 2


class InputError(EmbedkitError):
    """The input cannot be read as asked (missing file or column, corrupt file, bad row in strict mode)."""

    exit_code = 3


class ModelLoadError(EmbedkitError):
    """The model or its tokenizer could not be loaded."""

    exit_code = 4


class OutputError(EmbedkitError):
    """The output cannot be written (exists, missing or read-only directory, disk full)."""

    exit_code = 5


class IncompatibleError(EmbedkitError):
    """Two artefacts were made with different extraction settings (or a resume state does not match)."""

    exit_code = 6


class BusyError(OutputError):
    """Another process holds the output's lock: two writers of one output never both succeed."""

    exit_code = 7


def choice_error(option: str, value: object, valid: tuple[str, ...] | list[str]) -> ConfigError:
    """Build the one message every unknown named option value gets: what was given and what is valid."""
    return ConfigError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")
