"""The audit stage: WEAT statistics against the paper's formulas and planted truths."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from embedkit.audit.weat import associations, effect_size, permutation_p, weat


# ---------------------------------------------------------------------------------------------- statistics


def planted_vectors(s_x: np.ndarray, s_y: np.ndarray, n_a: int = 6, n_b: int = 6, phi: float = 0.4):
    """Vectors whose association values are exactly ``cos(phi) * s``: the planted s values ARE the data.

    Targets live in span(e0, e1, e2) as (0.3 + s/2, 0.3 - s/2, rest), unit length. Attribute word j of A is
    cos(phi) e0 + sin(phi) f_j with f_j a dimension of its own (likewise B on e1), so cos(w, a_j) = cos(phi) * w[0]
    for every j and s(w, A, B) = cos(phi) * (w[0] - w[1]) = cos(phi) * s. d is scale-free, so d(vectors) = d(s).
    """
    dim = 3 + n_a + n_b

    def targets(s):
        out = np.zeros((len(s), dim))
        out[:, 0], out[:, 1] = 0.3 + s / 2, 0.3 - s / 2
        out[:, 2] = np.sqrt(1 - out[:, 0] ** 2 - out[:, 1] ** 2)
        return out

    a, b = np.zeros((n_a, dim)), np.zeros((n_b, dim))
    a[:, 0], b[:, 1] = math.cos(phi), math.cos(phi)
    a[np.arange(n_a), 3 + np.arange(n_a)] = math.sin(phi)
    b[np.arange(n_b), 3 + n_a + np.arange(n_b)] = math.sin(phi)
    return targets(s_x), targets(s_y), a, b


def test_planted_vectors_carry_exactly_the_planted_associations():
    s = np.array([0.2, -0.1, 0.05, 0.0])
    x, y, a, b = planted_vectors(s[:2], s[2:])
    assert np.allclose(associations(np.concatenate([x, y]), a, b), math.cos(0.4) * s, atol=1e-12)


def test_planted_effect_size_is_recovered_within_0_05_and_significant():
    # s ~ N(+mu/2, sigma) for X and N(-mu/2, sigma) for Y, equal sizes. Over X u Y the s values are a two-Gaussian
    # mixture of variance sigma^2 + mu^2/4, so the population d is mu / sqrt(sigma^2 + mu^2 / 4) exactly.
    mu, sigma, n = 0.1, 0.1, 20_000
    true_d = mu / math.sqrt(sigma ** 2 + mu ** 2 / 4)  # 0.894
    rng = np.random.default_rng(7)
    x, y, a, b = planted_vectors(rng.normal(mu / 2, sigma, n), rng.normal(-mu / 2, sigma, n))
    result = weat(x, y, a, b, permutations=200, bootstrap=200, seed=1)
    assert abs(result.effect_size - true_d) < 0.05
    assert result.p_value < 0.01 and not result.exact
    assert result.ci_low < true_d < result.ci_high and result.ci_high - result.ci_low < 0.1


def test_planted_association_on_small_sets_is_significant_with_the_exact_test():
    rng = np.random.default_rng(3)
    x, y, a, b = planted_vectors(rng.normal(0.1, 0.05, 8), rng.normal(-0.1, 0.05, 8))
    result = weat(x, y, a, b, bootstrap=500)
    assert result.exact and result.permutations == math.comb(16, 8)
    assert result.p_value < 0.01 and result.effect_size > 1.5
    assert result.ci_low > 0.5


def reference_weat(x, y, a, b):
    """Caliskan et al.'s definitions written out with loops: s, d, S and the exact one-sided p."""
    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    def s(w):
        return sum(cos(w, v) for v in a) / len(a) - sum(cos(w, v) for v in b) / len(b)

    targets = list(x) + list(y)
    values = [s(w) for w in targets]
    sx, sy = values[: len(x)], values[len(x):]
    d = (np.mean(sx) - np.mean(sy)) / np.std(values, ddof=1)
    observed = sum(sx) - sum(sy)
    stats = []
    for chosen in itertools.combinations(range(len(targets)), len(x)):
        xi = [values[i] for i in chosen]
        yi = [values[i] for i in range(len(targets)) if i not in chosen]
        stats.append(sum(xi) - sum(yi))
    p = sum(t >= observed - 1e-12 for t in stats) / len(stats)
    return d, observed, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_weat_equals_the_papers_formulas(seed):
    rng = np.random.default_rng(seed)
    x, y, a, b = (rng.normal(size=(n, 12)) + shift for n, shift in ((5, 0.3), (4, 0.0), (3, 0.2), (4, 0.0)))
    d, statistic, p = reference_weat(x, y, a, b)
    result = weat(x, y, a, b, bootstrap=0)
    assert result.effect_size == pytest.approx(d, abs=1e-10)
    assert result.statistic == pytest.approx(statistic, abs=1e-10)
    assert result.exact and result.p_value == pytest.approx(p, abs=1e-12)
    assert math.isnan(result.ci_low)
    # swapping the targets flips d; scaling a vector changes nothing (cosines)
    assert weat(y, x, a, b, bootstrap=0).effect_size == pytest.approx(-d, abs=1e-10)
    assert weat(x * 7.5, y, a, b * 0.1, bootstrap=0).effect_size == pytest.approx(d, abs=1e-10)


def test_random_permutations_agree_with_the_exact_test():
    rng = np.random.default_rng(5)
    s = np.concatenate([rng.normal(0.3, 1, 8), rng.normal(0, 1, 8)])
    exact, total, is_exact = permutation_p(s, 8)
    sampled, done, sampled_exact = permutation_p(s, 8, exact_limit=0, permutations=20_000, rng=np.random.default_rng(0))
    assert is_exact and total == 12_870 and not sampled_exact and done == 20_000
    assert abs(exact - sampled) < 0.01  # binomial sd at p ~ 0.1 with 20,000 draws: 0.002


def test_no_spread_means_no_effect():
    same = np.ones((4, 3))
    result = weat(same, same, np.eye(3)[:1], np.eye(3)[1:2], bootstrap=50)
    assert result.effect_size == 0.0 and result.p_value == 1.0
    assert effect_size(np.zeros(3), np.zeros(3)) == 0.0


@pytest.mark.parametrize("words, exact_limit, permutations", [(6, 50_000, 0), (10, 50_000, 2_000)])
def test_false_positive_rate_without_association_is_alpha(words, exact_limit, permutations):
    # X, Y, A and B all drawn from one distribution: any p < 0.05 is a false positive. 200 seeds; the exact test
    # (6 + 6 words, 924 splits) and the random one (10 + 10 words: 184,756 splits, so 2,000 random ones).
    hits = 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        x, y, a, b = (rng.normal(size=(words, 16)) for _ in range(4))
        result = weat(x, y, a, b, bootstrap=0, permutations=permutations or 1, exact_limit=exact_limit, seed=seed)
        assert result.exact == (permutations == 0)
        hits += result.p_value < 0.05
    assert 0.03 <= hits / 200 <= 0.07, f"false-positive rate {hits / 200}"
