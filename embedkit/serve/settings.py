"""What the server loads and the limits it enforces: plain frozen settings, filled by the CLI or by a caller."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..spec import Runtime

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Limits:
    """Bounds on one request and on the work waiting for the model.

    Attributes:
        max_inputs: texts (or token arrays) in one request (OpenAI allows 2,048; a CPU server wants fewer).
        max_chars: characters in one text; a longer one is refused before any tokenisation work.
        max_body_bytes: request body size; above it the answer is 413 before the body is parsed.
        max_k: hits one search may ask for.
        max_queue: requests waiting for the model; one more is answered 503 with Retry-After.
    """

    max_inputs: int = 256
    max_chars: int = 20_000
    max_body_bytes: int = 4 * 1024 * 1024
    max_k: int = 100
    max_queue: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_inputs", "max_chars", "max_body_bytes", "max_k", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Batching:
    """Micro-batching: how long a request may wait for company, and how much one model run may merge.

    Attributes:
        wait_ms: the longest a request waits for others to join its run. A request that arrives while the
            model is busy waits anyway, so the wait only matters to a lone request: a few ms at most.
        max_inputs: inputs merged into one ``encode`` run (it splits them into token-budget batches itself);
            bounded so the first request of a run is not held behind thousands of others.
        batch_tokens: padded tokens per forward pass (None: the Extractor's default for the device).
    """

    wait_ms: float = 2.0
    max_inputs: int = 256
    batch_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.wait_ms < 0:
            raise ConfigError(f"the batch wait must be 0 ms or more, got {self.wait_ms}")
        if self.max_inputs < 1:
            raise ConfigError(f"inputs per model run must be at least 1, got {self.max_inputs}")


@dataclass(frozen=True)
class Artefact:
    """An index or classifier directory and the name requests use for it."""

    name: str
    path: Path


def parse_artefact(value: str, kind: str) -> Artefact:
    """``NAME=DIR`` or ``DIR`` (named after the directory)."""
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value.rstrip("/")).name, value
    if not name or not path:
        raise ConfigError(f"--{kind} {value!r}: give a directory, or NAME=DIR")
    return Artefact(name, Path(path))


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``embedkit serve`` was asked for.

    With ``indexes`` or ``classifiers`` the extraction settings come from each artefact; ``model`` (with
    ``layer``, ``pooling``, ``normalize``, ``max_length``, ``long_text``) adds an embedding model configured by
    the caller. With neither, the default model is served. ``trust_remote_code`` is only ever the caller's flag,
    never an artefact's.
    """

    model: str | None = None
    layer: int = -1
    pooling: str = "mean"
    normalize: bool = False
    max_length: int | None = None
    long_text: str = "truncate"
    indexes: tuple[Artefact, ...] = ()
    classifiers: tuple[Artefact, ...] = ()
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    api_key: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    threads: int | None = None
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    graceful_seconds: int = 30

    def __post_init__(self) -> None:
        names = [a.name for a in (*self.indexes, *self.classifiers)]
        if self.model is not None:
            names.append(self.model)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"two served things share the name {', '.join(duplicates)}: use NAME=DIR to rename one")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key is empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0..65535")

    @property
    def runtime(self) -> Runtime:
        """Where and how the served models run (a server draws no progress bars)."""
        return Runtime(self.device, self.batching.batch_tokens, self.threads, progress=False)

    def exposure_warning(self) -> str | None:
        """A warning when the server listens beyond this machine with no key guarding it."""
        if self.api_key is not None or is_loopback(self.host):
            return None
        return (
            f"serving on {self.host} without --api-key: anyone who can reach this address can use the model "
            "and read every stored column of the indexes; pass --api-key (or EMBEDKIT_API_KEY)"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
