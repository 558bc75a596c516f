"""Groups in the user's own data: per-group error rates of a classifier, and how far apart groups' vectors lie.

``group_metrics`` is what ``embedkit train --group-column`` reports next to the overall figures: a classifier
with 90% accuracy overall can still fail one group twice as often as another. ``group_separation`` answers the
question before any classifier exists: do the vectors encode group membership at all (centroid distances, a
permutation test on the between-group spread, and how well a linear probe predicts the group)? Vectors that
separate groups let any model built on them treat the groups differently, whether or not that is wanted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from .weat import unit_rows

MISSING_GROUP = "(missing)"
MAX_GROUPS = 100  # more distinct values than this is an id or a number column, not a group
DEFAULT_GROUP_PERMUTATIONS = 1_000
_CHUNK_ELEMENTS = 4_000_000


def _group_labels(groups: Sequence[Any]) -> np.ndarray:
    """Groups as strings; None and NaN become one explicit '(missing)' group instead of vanishing."""
    out = []
    for g in groups:
        missing = g is None or (isinstance(g, float) and math.isnan(g))
        out.append(MISSING_GROUP if missing else str(g))
    return np.array(out, dtype=object)


# ---------------------------------------------------------------------------------------------- classifier errors


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class GroupMetrics:
    """Accuracy and error rates overall and per group; ``gap`` = worst minus best group accuracy."""

    overall: dict[str, Any]
    groups: list[dict[str, Any]]
    classes: list[str]

    @property
    def gap(self) -> float:
        accuracies = [g["accuracy"] for g in self.groups]
        return float(max(accuracies) - min(accuracies)) if accuracies else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a rate with no rows to measure it on is null, not NaN, which strict JSON readers refuse)."""
        return _json_safe(
            {"overall": self.overall, "groups": self.groups, "classes": self.classes, "accuracy_gap": self.gap}
        )

    def format(self) -> str:
        return format_groups(self.to_dict())


def format_groups(report: dict[str, Any]) -> str:
    """A table of a ``GroupMetrics.to_dict()`` report: the overall line, one line per group, per-class miss rates
    (1 - recall) at the right, and the accuracy gap. Also used by ``train``'s summary, which keeps only the dict."""
    classes, groups = report["classes"], report["groups"]
    width = max(7, *(len(g["group"]) for g in groups))
    head = f"  {'group':<{width}}  {'rows':>6}  {'accuracy':>8}  {'error':>6}  " + "  ".join(
        f"miss[{c}]" for c in classes
    )
    lines = [head]
    for row in [{**report["overall"], "group": "overall"}, *groups]:
        misses = "  ".join(_rate(row["miss_rate"].get(c), len(c) + 6) for c in classes)
        lines.append(
            f"  {row['group']:<{width}}  {row['rows']:>6}  {_rate(row['accuracy'], 8, 4)}  "
            f"{_rate(row['error_rate'], 6, 4)}  " + misses
        )
    lines.append(f"  accuracy gap between groups: {report['accuracy_gap']:.4f}")
    return "\n".join(lines)


def _rate(value: float | None, width: int, digits: int = 3) -> str:
    # null in the JSON (no row to measure the rate on) reads as "-", not as a rate of 0
    return f"{'-':>{width}}" if value is None or value != value else f"{value:>{width}.{digits}f}"


def _rates(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    correct = y_true == y_pred
    miss, false_alarm = {}, {}
    for c in classes:
        is_c, said_c = y_true == c, y_pred == c
        # NaN where the group has no row of that class: "no evidence", not a rate of 0.
        miss[c] = float((is_c & ~said_c).sum() / is_c.sum()) if is_c.any() else float("nan")
        false_alarm[c] = float((~is_c & said_c).sum() / (~is_c).sum()) if (~is_c).any() else float("nan")
    accuracy = float(correct.mean()) if len(correct) else float("nan")
    return {
        "rows": len(y_true),
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "miss_rate": miss,
        "false_alarm_rate": false_alarm,
    }


def group_metrics(y_true: Sequence[Any], y_pred: Sequence[Any], groups: Sequence[Any]) -> GroupMetrics:
    """Accuracy, error rate, and per-class miss and false-alarm rates, overall and for each group.

    The per-class rates are what equalised-odds comparisons read: for a binary task, miss = false-negative rate and
    false alarm = false-positive rate of that class. Rows of a missing group form the group '(missing)'.
    """
    truth = np.array([str(v) for v in y_true], dtype=object)
    said = np.array([str(v) for v in y_pred], dtype=object)
    labels = _group_labels(groups)
    if not len(truth) == len(said) == len(labels):
        raise ConfigError(f"y_true, y_pred and groups differ in length: {len(truth)}, {len(said)}, {len(labels)}")
    if len(truth) == 0:
        raise InputError("no rows to compute group metrics on")
    classes = sorted(set(truth.tolist()) | set(said.tolist()))
    per_group = []
    for g in sorted(set(labels.tolist())):
        rows = labels == g
        per_group.append({"group": g, **_rates(truth[rows], said[rows], classes)})
    return GroupMetrics(overall=_rates(truth, said, classes), groups=per_group, classes=classes)


# ---------------------------------------------------------------------------------------------- vector separation


def between_group_spread(unit: np.ndarray, codes: np.ndarray, sizes: np.ndarray) -> float:
    """sum_g n_g * ||centroid_g - centroid||^2 of unit vectors: the between-group sum of squares (PERMANOVA's)."""
    total = unit.sum(axis=0)
    sums = np.zeros((len(sizes), unit.shape[1]))
    np.add.at(sums, codes, unit)
    return float(((sums**2).sum(axis=1) / sizes).sum() - (total**2).sum() / len(unit))


def spread_permutation_p(unit: np.ndarray, codes: np.ndarray, *, permutations: int, rng: np.random.Generator) -> float:
    """One-sided p of the between-group spread under random relabelling of the rows; (1 + hits) / (1 + perms).

    Each permutation's group sums are one matrix product of a one-hot label matrix with the vectors, done for a
    chunk of permutations at once; with k groups only k - 1 sums are needed (the last is the total minus them).
    """
    n, dim = unit.shape
    k = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    observed = between_group_spread(unit, codes, sizes)
    total = unit.sum(axis=0)
    base = (total**2).sum() / n
    hits, done = 0, 0
    chunk = max(1, _CHUNK_ELEMENTS // (n * max(1, k - 1)))
    while done < permutations:
        m = min(chunk, permutations - done)
        shuffled = np.argsort(rng.random((m, n)), axis=1)
        perm_codes = codes[shuffled]  # [m, n]: the labels dealt to the rows in random order
        spread = np.full(m, -base)
        rest = np.broadcast_to(total, (m, dim)).copy()
        for g in range(k - 1):
            # float64 throughout: a relabelling that only swaps rows within groups has exactly the observed spread
            # and must count as a hit; float32 rounding could push it just below.
            sums = (perm_codes == g).astype(np.float64) @ unit  # [m, dim]
            spread += (sums**2).sum(axis=1) / sizes[g]
            rest -= sums
        spread += (rest**2).sum(axis=1) / sizes[k - 1]
        hits += int((spread >= observed - 1e-9 * abs(observed)).sum())
        done += m
    return (1 + hits) / (1 + permutations)


@dataclass
class GroupSeparation:
    """How far apart the groups' vectors lie."""

    groups: list[str]
    sizes: list[int]
    centroid_distances: list[dict[str, Any]]  # one row per pair: group_a, group_b, n_a, n_b, cosine_distance
    spread: float
    p_value: float
    permutations: int
    probe_accuracy: float
    probe_macro_f1: float
    majority_share: float
    cv: int
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        names = (
            "groups",
            "sizes",
            "centroid_distances",
            "spread",
            "p_value",
            "permutations",
            "probe_accuracy",
            "probe_macro_f1",
            "majority_share",
            "cv",
            "skipped",
        )
        return {k: getattr(self, k) for k in names}

    def format(self) -> str:
        lines = ["  groups: " + ", ".join(f"{g} ({n})" for g, n in zip(self.groups, self.sizes))]
        for row in self.centroid_distances:
            lines.append(
                f"  centroid cosine distance {row['group_a']} - {row['group_b']}: {row['cosine_distance']:.4f}"
            )
        lines.append(
            f"  between-group spread {self.spread:.4f}, permutation p = {self.p_value:.4g} "
            f"({self.permutations:,} relabellings)"
        )
        lines.append(
            f"  linear probe predicts the group: accuracy {self.probe_accuracy:.4f} (majority share "
            f"{self.majority_share:.4f}), macro-F1 {self.probe_macro_f1:.4f}, {self.cv}-fold CV"
        )
        return "\n".join(lines)


def group_separation(
    vectors: np.ndarray,
    groups: Sequence[Any],
    *,
    permutations: int = DEFAULT_GROUP_PERMUTATIONS,
    cv: int = 5,
    seed: int = 0,
) -> GroupSeparation:
    """Centroid cosine distances, a permutation test of the between-group spread, and a linear probe's accuracy.

    The spread is measured on unit-length vectors, so it is about directions (what cosine similarity, search and
    most classifiers on normalised features see), not about vector lengths. The probe is the cross-validated,
    standardised logistic regression of ``embedkit probe`` / ``train --cv``; compare it with ``majority_share``,
    the accuracy of always guessing the largest group.

    Raises:
        InputError: fewer than 2 groups, more than ``MAX_GROUPS``, or a group with fewer rows than ``cv``.
    """
    from ..classify import check_classes
    from ..probe import score_vectors

    vectors = np.asarray(vectors)
    labels = _group_labels(groups)
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise ConfigError(f"vectors {vectors.shape} and {len(labels)} group labels do not match")
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    if len(names) < 2:
        raise InputError(f"group separation needs at least 2 groups; found {len(names)}: {', '.join(names)}")
    if len(names) > MAX_GROUPS:
        raise InputError(
            f"{len(names)} distinct groups: more than {MAX_GROUPS} looks like an id or a number column, not a group"
        )
    if permutations < 1:
        raise ConfigError(f"permutations must be at least 1, got {permutations}")
    sizes = np.bincount(codes).astype(np.float64)
    check_classes({str(g): int(n) for g, n in zip(names, sizes)}, "group column", cv=cv, test_size=0)
    unit = unit_rows(vectors)
    centroids = unit_rows(np.stack([unit[codes == g].mean(axis=0) for g in range(len(names))]))
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            pairs.append(
                {
                    "group_a": str(names[i]),
                    "group_b": str(names[j]),
                    "n_a": int(sizes[i]),
                    "n_b": int(sizes[j]),
                    "cosine_distance": float(1.0 - centroids[i] @ centroids[j]),
                }
            )
    rng = np.random.default_rng(seed)
    p = spread_permutation_p(unit, codes, permutations=permutations, rng=rng)
    scores = score_vectors(vectors.astype(np.float32), labels.astype(str), cv=cv, seed=seed)
    return GroupSeparation(
        groups=[str(g) for g in names],
        sizes=[int(n) for n in sizes],
        centroid_distances=pairs,
        spread=between_group_spread(unit, codes, sizes),
        p_value=float(p),
        permutations=permutations,
        probe_accuracy=float(scores["accuracy"]),
        probe_macro_f1=float(scores["macro_f1"]),
        majority_share=float(sizes.max() / sizes.sum()),
        cv=cv,
    )


__all__ = ["MISSING_GROUP", "GroupMetrics", "GroupSeparation", "group_metrics", "group_separation"]
