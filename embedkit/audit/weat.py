"""WEAT statistics (Caliskan, Bryson & Narayanan, Science 2017): effect size, permutation p-value, bootstrap interval.

Two target sets X, Y (e.g. male and female terms) and two attribute sets A, B (e.g. career and family words).
For a word w::

    s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)

The effect size is ``d = (mean_x s(x) - mean_y s(y)) / std_{w in X u Y} s(w)`` (sample std): how many standard
deviations apart the two target sets lie on the A-vs-B axis; positive = X leans to A and Y to B. ``d`` lies in
[-2, 2]; Cohen's rough marks 0.2 / 0.5 / 0.8 read as small / medium / large.

The one-sided p-value is the share of equal-size re-partitions (X_i, Y_i) of X u Y whose statistic
``S = sum_x s(x) - sum_y s(y)`` reaches the observed one. Only the s values move under a re-partition, so the
test runs on a vector of |X|+|Y| numbers: every permutation is a gather and a row sum (numpy, in chunks).

The bootstrap interval resamples each of the four word sets with replacement, as counts (multinomial weights),
so all resamples are a few matrix products on the precomputed cosine matrix instead of a Python loop.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError

DEFAULT_PERMUTATIONS = 10_000
DEFAULT_BOOTSTRAP = 2_000
# Enumerate every re-partition when there are at most this many: exact, and no slower than 10,000 random ones
# (8 + 8 words: 12,870 partitions; 10 + 10: 184,756, so random).
EXACT_LIMIT = 50_000
CI_LEVEL = 0.95
# Elements per chunk of the permutation and bootstrap arrays: bounds memory (~16 MB of float64) for any set size.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class WeatResult:
    """One association test on one set of vectors."""

    effect_size: float
    p_value: float
    ci_low: float
    ci_high: float
    statistic: float  # S = sum_x s(x) - sum_y s(y)
    n_x: int
    n_y: int
    n_a: int
    n_b: int
    permutations: int  # re-partitions evaluated (all of them when exact)
    exact: bool
    p_reverse: float  # the one-sided p of the opposite direction (X~B, Y~A)

    @property
    def p_in_direction(self) -> float:
        return p_in_direction(self.effect_size, self.p_value, self.p_reverse)

    def to_dict(self) -> dict:
        return asdict(self)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float64, so cosines of near-parallel vectors keep their small differences)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def associations(targets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) for every row w of ``targets``."""
    t = unit_rows(targets)
    return (t @ unit_rows(a).T).mean(axis=1) - (t @ unit_rows(b).T).mean(axis=1)


def effect_size(s_x: np.ndarray, s_y: np.ndarray) -> float:
    """Caliskan's d from the association values of X and Y; 0 when every s is equal (no spread, no direction)."""
    spread = float(np.std(np.concatenate([s_x, s_y]), ddof=1))
    if not spread > 1e-15:
        return 0.0
    return float((np.mean(s_x) - np.mean(s_y)) / spread)


class Permutations(NamedTuple):
    p: float  # share of re-partitions whose statistic is >= the observed one (WEAT's one-sided p)
    p_reverse: float  # share whose statistic is <= the observed one (the same test in the other direction)
    permutations: int
    exact: bool


def p_in_direction(effect_size: float, p: float, p_reverse: float) -> float:
    """The one-sided p in the direction the effect points to: ``p`` for d >= 0, ``p_reverse`` for d < 0.

    WEAT's p tests the direction its sets are written in (X~A). A user's test may be written the other way round;
    a large negative d is an association too, and must not read as "none". Reading both tails at alpha each is a
    two-sided test at 2 * alpha; the report says which direction each p belongs to.
    """
    return p if effect_size >= 0 or math.isnan(p_reverse) else p_reverse


def permutation_p(
    s: np.ndarray,
    n_x: int,
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    exact_limit: int = EXACT_LIMIT,
    rng: np.random.Generator | None = None,
) -> Permutations:
    """One-sided p-values of ``sum(s[:n_x]) - sum(s[n_x:])`` over re-partitions of ``s`` into n_x and the rest.

    Exact (every partition, the observed one included) when there are at most ``exact_limit``; else
    ``permutations`` random ones and ``p = (1 + hits) / (1 + permutations)``, which is never 0 and keeps the
    test's false-positive rate at or below alpha (Phipson & Smyth 2010). Both tails come from the same draws.
    """
    s = np.asarray(s, dtype=np.float64)
    n = len(s)
    if not 0 < n_x < n:
        raise ConfigError(f"a permutation test needs words on both sides, got {n_x} and {n - n_x}")
    # S = 2 * sum(chosen) - sum(all), so comparing the sums of the chosen n_x values is the same test.
    observed = s[:n_x].sum()
    # Summation order differs between the observed sum and the same partition met again; without a tolerance
    # the observed partition could fail to count itself.
    tol = 1e-9 * (np.abs(s).sum() + 1e-300)
    total = math.comb(n, n_x)
    if total <= exact_limit:
        hits, low = 0, 0
        chunk = max(1, _CHUNK_ELEMENTS // n_x)
        combos = itertools.combinations(range(n), n_x)
        while True:
            block = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, chunk)), dtype=np.int64)
            if block.size == 0:
                break
            sums = s[block.reshape(-1, n_x)].sum(axis=1)
            hits += int((sums >= observed - tol).sum())
            low += int((sums <= observed + tol).sum())
        return Permutations(hits / total, low / total, total, True)
    if permutations < 1:
        raise ConfigError(f"permutations must be at least 1, got {permutations}")
    rng = rng if rng is not None else np.random.default_rng(0)
    hits, low, done = 0, 0, 0
    chunk = max(1, _CHUNK_ELEMENTS // n)
    while done < permutations:
        m = min(chunk, permutations - done)
        # The positions of the n_x smallest of n uniform draws are a uniformly random n_x-subset: m of them at once.
        chosen = np.argpartition(rng.random((m, n)), n_x - 1, axis=1)[:, :n_x]
        sums = s[chosen].sum(axis=1)
        hits += int((sums >= observed - tol).sum())
        low += int((sums <= observed + tol).sum())
        done += m
    return Permutations((1 + hits) / (1 + permutations), (1 + low) / (1 + permutations), permutations, False)


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` bootstrap resamples of n items as counts per item (each row sums to n)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)


def bootstrap_interval(
    cos_a: np.ndarray,
    cos_b: np.ndarray,
    n_x: int,
    *,
    resamples: int = DEFAULT_BOOTSTRAP,
    level: float = CI_LEVEL,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile interval of d when X, Y, A and B are each resampled with replacement.

    ``cos_a`` [n_x + n_y, n_a] and ``cos_b`` [n_x + n_y, n_b] are the cosines of the target words (X first) to
    the attribute words. Resamples with no spread (d undefined) are left out; NaNs if none is left.
    """
    if resamples < 1:
        return float("nan"), float("nan")
    rng = rng if rng is not None else np.random.default_rng(0)
    n, n_a, n_b = cos_a.shape[0], cos_a.shape[1], cos_b.shape[1]
    n_y = n - n_x
    ds = []
    chunk = max(1, _CHUNK_ELEMENTS // max(n, n_a, n_b))
    done = 0
    while done < resamples:
        m = min(chunk, resamples - done)
        # s of every target word under each attribute resample: [n, m]
        s = cos_a @ (_counts(rng, n_a, m).T / n_a) - cos_b @ (_counts(rng, n_b, m).T / n_b)
        w = np.concatenate([_counts(rng, n_x, m), _counts(rng, n_y, m)], axis=1)  # [m, n] target counts
        mean_x = (w[:, :n_x] * s[:n_x].T).sum(axis=1) / n_x
        mean_y = (w[:, n_x:] * s[n_x:].T).sum(axis=1) / n_y
        mean_all = (w * s.T).sum(axis=1) / n
        var = (w * (s.T - mean_all[:, None]) ** 2).sum(axis=1) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (mean_x - mean_y) / np.sqrt(var)
        ds.append(d[var > 1e-30])
        done += m
    d = np.concatenate(ds)
    if d.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(d, [tail, 100 - tail])
    return float(low), float(high)


def weat(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    exact_limit: int = EXACT_LIMIT,
    seed: int | list[int] = 0,
) -> WeatResult:
    """Run one WEAT on four matrices of vectors (one row per word).

    Args:
        x, y: target vectors (rows). a, b: attribute vectors (rows).
        permutations: random re-partitions when the exact test would enumerate more than ``exact_limit``.
        bootstrap: resamples for the interval of d (0 = no interval: NaNs).
        seed: seeds the permutations and the bootstrap (a list works too: one stream per test and layer).
    """
    for name, m in (("X", x), ("Y", y), ("A", a), ("B", b)):
        if np.ndim(m) != 2 or len(m) == 0:
            raise ConfigError(f"WEAT needs a non-empty [words, dim] matrix for {name}, got shape {np.shape(m)}")
    if len(x) + len(y) < 3:
        raise ConfigError(
            "WEAT needs at least 3 target words in X and Y together (the effect size divides by their spread)"
        )
    targets = unit_rows(np.concatenate([x, y]))
    cos_a, cos_b = targets @ unit_rows(a).T, targets @ unit_rows(b).T
    s = cos_a.mean(axis=1) - cos_b.mean(axis=1)
    n_x = len(x)
    rng_perm, rng_boot = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))
    tails = permutation_p(s, n_x, permutations=permutations, exact_limit=exact_limit, rng=rng_perm)
    low, high = bootstrap_interval(cos_a, cos_b, n_x, resamples=bootstrap, rng=rng_boot)
    return WeatResult(
        effect_size=effect_size(s[:n_x], s[n_x:]),
        p_value=float(tails.p),
        ci_low=low,
        ci_high=high,
        statistic=float(s[:n_x].sum() - s[n_x:].sum()),
        n_x=n_x,
        n_y=len(y),
        n_a=len(a),
        n_b=len(b),
        permutations=tails.permutations,
        exact=tails.exact,
        p_reverse=float(tails.p_reverse),
    )


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_PERMUTATIONS",
    "EXACT_LIMIT",
    "Permutations",
    "WeatResult",
    "associations",
    "bootstrap_interval",
    "effect_size",
    "p_in_direction",
    "permutation_p",
    "unit_rows",
    "weat",
]
