"""``embedkit serve``: a warm model behind an OpenAI-compatible HTTP API, with search, predict and a web page.

Modules: ``settings`` (what to load, limits), ``registry`` (loaded artefacts, one model per settings),
``batcher`` (micro-batching on one worker thread per model), ``schemas`` (request bodies), ``routes``,
``errors`` (OpenAI's error shape), ``metrics`` (Prometheus), ``page`` (the web page), ``app`` (middlewares),
``server`` (uvicorn). Needs the ``serve`` extra: ``pip install embedkit[serve]``.
"""

from __future__ import annotations

from .settings import Artefact, Batching, Limits, ServeSettings, parse_artefact

__all__ = ["Artefact", "Batching", "Limits", "ServeSettings", "parse_artefact"]
