"""The audit stage: social-bias association tests on a model's features, layer by layer.

Modules: ``weat`` (the statistics).
"""

from __future__ import annotations

from .weat import WeatResult, weat

__all__ = ["WeatResult", "weat"]
