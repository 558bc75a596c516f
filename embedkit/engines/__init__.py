"""Execution engines for the embed stage beyond the in-process loop of ``embedkit.embed``.

``local`` (the default) is ``embedkit.embed.embed_file``; ``ray`` is :func:`embedkit.engines.ray.embed_file_ray`.
Ray is an optional dependency (``pip install 'embedkit[ray]'``), so nothing here imports it eagerly.
"""

from __future__ import annotations

ENGINES = ("local", "ray")

__all__ = ["ENGINES"]
