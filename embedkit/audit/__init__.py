"""The audit stage: social-bias association tests on a model's features, layer by layer, and group checks on data.

Modules: ``weat`` (the statistics), ``testsets`` (built-in tests, user TOML), ``run`` (the stage: one forward
pass, the artefact directory), ``report`` (HTML), ``groups`` (per-group error rates of a classifier, and group
separation in a features file). Its figures are drawn by :mod:`embedkit.plots`.
"""

from __future__ import annotations

from .builtin_tests import BUILTIN_TESTS
from .groups import GroupMetrics, GroupSeparation, group_metrics, group_separation
from .run import AuditResult, audit_features, audit_model
from .testsets import AssociationTest, load_tests
from .weat import WeatResult, weat

__all__ = [
    "BUILTIN_TESTS",
    "AssociationTest",
    "AuditResult",
    "GroupMetrics",
    "GroupSeparation",
    "WeatResult",
    "audit_features",
    "audit_model",
    "group_metrics",
    "group_separation",
    "load_tests",
    "weat",
]
