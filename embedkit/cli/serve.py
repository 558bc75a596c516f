"""``embedkit serve``."""

from __future__ import annotations

import click

from ..config import LONG_TEXT_MODES, POOLING_MODES
from . import cli, quiet_libraries, runtime_options


@cli.command()
@click.option(
    "--model",
    "-m",
    default=None,
    help="Also serve this model (hub id or directory) with --layer/--pooling/--normalize "
    "[default with no --index/--classifier: $EMBEDKIT_MODEL or openai-community/gpt2].",
)
@click.option("--layer", "-l", type=int, default=-1, show_default=True, help="Layer of --model (-1 = last).")
@click.option(
    "--pooling", "-p", type=click.Choice(POOLING_MODES), default="mean", show_default=True, help="Pooling of --model."
)
@click.option("--normalize", is_flag=True, help="L2-normalise --model's vectors.")
@click.option(
    "--max-length",
    type=click.IntRange(min=2),
    default=None,
    help="Tokens per window of --model [default: the model's limit].",
)
@click.option(
    "--long-text",
    type=click.Choice(LONG_TEXT_MODES),
    default="truncate",
    show_default=True,
    help="Texts of --model over --max-length: cut or split into windows.",
)
@click.option(
    "--index",
    "indexes",
    multiple=True,
    metavar="[NAME=]DIR",
    help="Index directory to search (repeatable); its settings embed the queries.",
)
@click.option(
    "--classifier",
    "classifiers",
    multiple=True,
    metavar="[NAME=]DIR",
    help="Classifier directory from `embedkit train` (repeatable).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback should have --api-key.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="EMBEDKIT_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on every route but /healthz [env: EMBEDKIT_API_KEY].",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow model code to run (never taken from an artefact).")
@runtime_options(only=("device", "batch_tokens", "threads"))
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Longest a request waits for others to share its model run.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Requests waiting for the model before new ones get 503.",
)
@click.option("--max-inputs", type=click.IntRange(min=1), default=256, show_default=True, help="Texts per request.")
@click.option("--max-chars", type=click.IntRange(min=1), default=20_000, show_default=True, help="Characters per text.")
@click.option("--max-body", default="4MB", show_default=True, help="Request body limit (413 above it).")
@click.option("--max-k", type=click.IntRange(min=1), default=100, show_default=True, help="Hits per search.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def serve(
    model,
    layer,
    pooling,
    normalize,
    max_length,
    long_text,
    indexes,
    classifiers,
    host,
    port,
    api_key,
    trust_remote_code,
    runtime,
    batch_wait_ms,
    max_queue,
    max_inputs,
    max_chars,
    max_body,
    max_k,
    quiet,
):
    """Serve a warm model over HTTP: OpenAI-compatible /v1/embeddings, /v1/search, /v1/predict and a web page.

    With --index or --classifier, queries are embedded with each artefact's own settings, exactly as
    `embedkit embed` made its vectors. Stops on Ctrl-C or SIGTERM after finishing the requests in flight.
    """
    from ..errors import ConfigError
    from ..index import parse_memory
    from ..serve import Batching, Limits, ServeSettings, parse_artefact
    from ..serve.server import serve as run_server

    quiet_libraries(True)
    try:
        max_body_bytes = parse_memory(max_body)
    except ConfigError:
        raise ConfigError(f"--max-body {max_body!r}: use e.g. 4MB, 512KB or a byte count") from None
    settings = ServeSettings(
        model=model,
        layer=layer,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        long_text=long_text,
        indexes=tuple(parse_artefact(v, "index") for v in indexes),
        classifiers=tuple(parse_artefact(v, "classifier") for v in classifiers),
        host=host,
        port=port,
        api_key=api_key,
        trust_remote_code=trust_remote_code,
        device=runtime.device,
        threads=runtime.threads,
        limits=Limits(
            max_inputs=max_inputs, max_chars=max_chars, max_body_bytes=max_body_bytes, max_k=max_k, max_queue=max_queue
        ),
        batching=Batching(wait_ms=batch_wait_ms, batch_tokens=runtime.batch_tokens),
    )
    warning = settings.exposure_warning()
    if warning:
        click.echo(f"warning: {warning}", err=True)

    def ready(services) -> None:
        if quiet:
            return
        for line in services.summary_lines():
            click.echo(line, err=True)
        click.echo(f"serving on http://{host}:{port} (page at /, API at /v1, Ctrl-C to stop)", err=True)

    run_server(settings, log_level="warning" if quiet else "info", on_ready=ready)
