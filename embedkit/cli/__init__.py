"""The ``embedkit`` command line: parses options, calls the library, prints. No logic lives here.

Each command group sits in its own module; errors raised by the library (``EmbedkitError``) become clean
one-line messages with the exit codes documented in ``embedkit.errors``.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import EmbedkitError


class _CleanError(click.ClickException):
    def __init__(self, error: EmbedkitError) -> None:
        super().__init__(str(error))
        # click's stubs declare exit_code a ClassVar, but click reads it from the instance: per-error codes work.
        self.exit_code = error.exit_code  # type: ignore[misc]


class EmbedkitGroup(click.Group):
    """A click group that maps library errors to messages and exit codes instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmbedkitError as exc:
            raise _CleanError(exc) from exc
        except BrokenPipeError:
            # The reader went away (`embedkit info x | head`): not an error. Point stdout at devnull so the
            # interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except MemoryError as exc:
            raise click.ClickException("out of memory: lower --batch-tokens (or --max-length)") from exc
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug, not a user mistake: short message, traceback only with --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {exc} (rerun with `embedkit --debug ...` for the traceback "
                "and please report it)"
            ) from exc


@click.group(cls=EmbedkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show full tracebacks for internal errors.")
@click.version_option(package_name="embedkit")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """embedkit: hidden-state features from transformer language models (GPT-2 first).

    Embed a text dataset to Parquet, then train classifiers, cluster, build a FAISS index and search it.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # huggingface_hub prints through a stderr handler of its own; passing its records on to ours as well showed
    # every hub warning twice when they are shown (-v). transformers already keeps its records to itself.
    logging.getLogger("huggingface_hub").propagate = False
    if verbose == 0:
        # Offline, huggingface_hub logs every retry of an unreachable hub (a dozen lines, each twice through its
        # own handler and ours) before embedkit's one-line message says what to do; -v shows them again. It sets
        # its level from this variable when first imported (lazily, later), so a setLevel now would be undone.
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def wait_option(command):
    """``--wait``: the same flag and help on every command that writes an output under its lock."""
    return click.option(
        "--wait",
        is_flag=True,
        help="If another embedkit process is writing the same output, wait for it to finish instead of failing "
        "at once (exit 7).",
    )(command)


def quiet_libraries(quiet: bool) -> None:
    """Silence transformers' own progress bars when the user asked for quiet output."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


from . import audit as _audit  # noqa: E402, F401
from . import classify as _classify  # noqa: E402, F401
from . import cluster as _cluster  # noqa: E402, F401
from . import embed as _embed  # noqa: E402, F401  (commands register themselves on the group)
from . import index as _index  # noqa: E402, F401
from . import pipeline as _pipeline  # noqa: E402, F401
from . import probe as _probe  # noqa: E402, F401
from . import samples as _samples  # noqa: E402, F401
from . import serve as _serve  # noqa: E402, F401

__all__ = ["cli", "quiet_libraries", "wait_option"]
