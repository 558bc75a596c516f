"""The ``embedkit`` command line: parses options, calls the library, prints. No logic lives here.

Each command group sits in its own module; errors raised by the library (``EmbedkitError``) become clean
one-line messages with the exit codes documented in ``embedkit.errors``.
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
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


# What to lower when a command runs out of memory. Only the commands that run a model hold batches of padded
# tokens; the others hold the vectors of the features file (cluster, train) or the index (index build/add).
MEMORY_HINTS = {
    "cluster": "the reduced vectors of every row are held in memory: lower --pca or cluster a sample of the rows",
    "index": "lower --memory (a smaller budget picks a compressed index kind) or build with --no-store",
    "train": "the vectors of every row are held in memory: train on a sample of the rows or on one --column",
}
DEFAULT_MEMORY_HINT = "lower --batch-tokens (or --max-length)"


def out_of_memory_message(ctx: click.Context) -> str:
    """The out-of-memory message of the command that ran: it names the command and what to lower for it."""
    name = ctx.invoked_subcommand or ctx.info_name or "embedkit"
    return f"out of memory in `embedkit {name}`: {MEMORY_HINTS.get(name, DEFAULT_MEMORY_HINT)}"


# Which module defines each command. A command's module is imported only when that command runs (or when help
# lists it): importing all of them costs ~0.2 s on every start (#23). A test checks this table against the modules.
LAZY_COMMANDS = {
    "audit": "audit",
    "cluster": "cluster",
    "dedup": "dedup",
    "embed": "embed",
    "index": "index",
    "info": "embed",
    "predict": "classify",
    "probe": "probe",
    "run": "pipeline",
    "samples": "samples",
    "search": "index",
    "serve": "serve",
    "train": "classify",
}


class EmbedkitGroup(click.Group):
    """A click group that maps library errors to messages and exit codes instead of tracebacks.

    Commands are loaded lazily (click's documented lazy-group pattern): the module named in ``LAZY_COMMANDS``
    registers its commands on this group when one of them is first asked for.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            importlib.import_module(f"{__name__}.{LAZY_COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

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
            raise click.ClickException(out_of_memory_message(ctx)) from exc
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
    _skip_final_collection()
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # huggingface_hub prints through a stderr handler of its own; passing its records on to ours as well showed
    # every hub warning twice when they are shown (-v). transformers already keeps its records to itself.
    logging.getLogger("huggingface_hub").propagate = False
    ctx.obj["verbose"] = verbose
    if verbose == 0:
        # Offline, huggingface_hub logs every retry of an unreachable hub (a dozen lines, each twice through its
        # own handler and ours) before embedkit's one-line message says what to do; -v shows them again. Through
        # its logging API (which fixes its level on import, so it is imported now: ~10 ms) and only for this
        # command: a program that calls the CLI in-process (CliRunner) gets its own setting back afterwards.
        from huggingface_hub.utils import logging as hub_logging

        before = hub_logging.get_verbosity()
        hub_logging.set_verbosity_error()
        ctx.call_on_close(lambda: hub_logging.set_verbosity(before))


@functools.cache  # registered at most once per process
def _skip_final_collection() -> None:
    """At exit, freeze what is left so CPython's final garbage collections do not walk and free it object by object.

    A command runs once per process; what it loaded (torch, a model, an index) lives until exit, where CPython
    collects again while it tears the modules down: ~0.7 s CPU in a process that imported torch, to free memory
    the exit frees anyway (#23, benchmarks/RESULTS.md). embedkit's own clean-up (locks, temporary files) runs in
    finally blocks and atexit handlers, not in finalizers of garbage. A program that calls the CLI in-process
    (CliRunner) keeps its collections until it exits.
    """
    atexit.register(gc.freeze)


def wait_option(command):
    """``--wait``: the same flag and help on every command that writes an output under its lock."""
    return click.option(
        "--wait",
        is_flag=True,
        help="If another embedkit process is writing the same output, wait for it to finish instead of failing "
        "at once (exit 7).",
    )(command)


def ray_address_option(command):
    """``--ray-address``: the same option on every command that can run on Ray (embed, index build)."""
    return click.option(
        "--ray-address",
        default=None,
        help="With --engine ray: cluster to join (HOST:PORT, ray://HOST:PORT, auto) "
        "[default: $RAY_ADDRESS, else a local instance].",
    )(command)


def trust_artefact_option(command):
    """``--trust-remote-code`` on commands whose model is named by an artefact (predict, search)."""
    return click.option(
        "--trust-remote-code",
        is_flag=True,
        help="Allow the model named by the artefact to run its own Python code (a stored setting never does).",
    )(command)


def split_commas(_ctx, _param, values):
    """Let repeatable options also take comma-separated lists: --pooling mean,last == --pooling mean --pooling last."""
    return tuple(v.strip() for value in values for v in str(value).split(",") if v.strip())


def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


TEXT_HELP = "Column holding the text."
ID_HELP = "Column passed through as `id` [default: the row number]."
FORMAT_HELP = "Input format [default: from the extension]."


def input_options(
    f=None,
    *,
    path: str = "input",
    text_default: str | None = "text",
    text_help: str = TEXT_HELP,
    id_help: str = ID_HELP,
    keep: bool = True,
    keep_text: bool | None = None,
    format_help: str | None = FORMAT_HELP,
):
    """The input's columns and format; the command receives them as ``spec``, an :class:`~embedkit.spec.InputSpec`
    of its ``path`` parameter (an argument or option the command declares; ``spec`` is None when it is not given).

    Commands differ in what they offer, not in what an option means: ``text_default`` None (predict, search) is
    the column the artefact was made from; ``keep`` False leaves out --keep; ``keep_text`` None offers
    --keep-text/--no-keep-text, a bool fixes it; ``format_help`` None leaves out --format.
    """
    if f is None:
        return functools.partial(
            input_options,
            path=path,
            text_default=text_default,
            text_help=text_help,
            id_help=id_help,
            keep=keep,
            keep_text=keep_text,
            format_help=format_help,
        )

    @functools.wraps(f)
    def command(*args, text_column, id_column, **kwargs):
        from ..spec import InputSpec

        where = kwargs.pop(path)
        kept = tuple(kwargs.pop("keep", ()))
        with_text = kwargs.pop("keep_text", True if keep_text is None else keep_text)
        fmt = kwargs.pop("fmt", None)
        kwargs["spec"] = None if where is None else InputSpec(where, fmt, text_column, id_column, kept, with_text)
        return f(*args, **kwargs)

    from ..sources import FORMATS

    options = [
        click.option("--text-column", default=text_default, show_default=text_default is not None, help=text_help),
        click.option("--id-column", default=None, help=id_help),
    ]
    if keep:
        options.append(
            click.option(
                "--keep",
                multiple=True,
                callback=split_commas,
                help="Columns passed through unchanged (repeat or comma-separate).",
            )
        )
    if keep_text is None:
        options.append(
            click.option(
                "--keep-text/--no-keep-text",
                default=True,
                show_default=True,
                help="Store the text column too, so results (index hits, clusters) can show the text.",
            )
        )
    if format_help is not None:
        options.append(click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help=format_help))
    return _apply(command, options)


RUNTIME_OPTIONS = ("device", "batch_tokens", "threads", "quiet")


def runtime_options(f=None, *, only: tuple[str, ...] = RUNTIME_OPTIONS):
    """Where and how the model runs; the command receives them as ``runtime``, a :class:`~embedkit.spec.Runtime`.

    ``only`` names the options a command offers (search runs no batches: device and quiet); the others keep
    Runtime's defaults. Library output (transformers' warnings and bars) is silenced unless ``-v`` was given.
    """
    if f is None:
        return functools.partial(runtime_options, only=only)

    @functools.wraps(f)
    def command(*args, **kwargs):
        from ..spec import Runtime

        settings = {name: kwargs.pop(name) for name in ("device", "batch_tokens", "threads") if name in only}
        quiet = kwargs.pop("quiet") if "quiet" in only else False
        verbose = bool((click.get_current_context().find_root().obj or {}).get("verbose"))
        quiet_libraries(quiet or not verbose)
        kwargs["runtime"] = Runtime(**settings, progress=not quiet, verbose=verbose)
        return f(*args, **kwargs)

    from ..config import DEVICES

    options = dict(zip(RUNTIME_OPTIONS, runtime_option_list(DEVICES)))
    return _apply(command, [options[name] for name in RUNTIME_OPTIONS if name in only])


def runtime_option_list(devices):
    """The run-time options as click decorators, in ``RUNTIME_OPTIONS`` order."""
    return [
        click.option("--device", type=click.Choice(devices), default="auto", show_default=True),
        click.option(
            "--batch-tokens",
            type=click.IntRange(min=1),
            default=None,
            help="Padded tokens per forward pass [default: 512 on CPU, 65536 on CUDA].",
        ),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch."),
        quiet_option,
    ]


def quiet_option(command):
    """``--quiet``/``-q``: no progress bar (the commands that draw one)."""
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(command)


def quiet_libraries(quiet: bool) -> None:
    """Silence transformers' and the hub's progress bars when asked, for this command only.

    Without importing transformers (seconds, #23) on commands that may never load a model: both it and
    huggingface_hub read the variable when they are first imported; if they already are, they are told directly.
    A program that calls the CLI in-process gets the variable and its bars back when the command ends.
    """
    if not quiet:
        return
    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hub_utils = sys.modules.get("huggingface_hub.utils")
    if hub_utils is not None:
        hub_utils.disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()

    def restore() -> None:
        if previous is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().call_on_close(restore)


__all__ = [
    "cli",
    "input_options",
    "quiet_libraries",
    "quiet_option",
    "runtime_options",
    "split_commas",
    "trust_artefact_option",
    "wait_option",
]
