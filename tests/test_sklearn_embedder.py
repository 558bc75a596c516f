"""HiddenStateEmbedder: the scikit-learn estimator contract, with texts as input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from conftest import sample_texts
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks as ec
from sklearn.utils.estimator_checks import parametrize_with_checks

from embedkit import InputError
from embedkit.estimator import HiddenStateEmbedder

# The tags declare string input (two_d_array=False), so parametrize_with_checks yields only the checks that
# apply to any input (clone); all of sklearn's generic fit/transform checks feed random numeric matrices and
# are skipped by sklearn itself (with a SkipTestWarning, silenced here since the skip is intended). No model is
# loaded by these, so the default model name is enough.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SkipTestWarning)
    generic_checks = parametrize_with_checks([HiddenStateEmbedder()])


@generic_checks
def test_sklearn_generic_checks(estimator, check):
    check(estimator)


# API checks that never fit on numeric data, run explicitly because the string-input tag skips them above.
API_CHECKS = [
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_estimator_repr,
    ec.check_no_attributes_set_in_init,
    ec.check_do_not_raise_errors_in_init_or_set_params,
    ec.check_mixin_order,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_estimator_cloneable,
]


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__)
def test_sklearn_api_checks(check):
    check("HiddenStateEmbedder", HiddenStateEmbedder())


def test_tags_declare_text_input():
    tags = HiddenStateEmbedder().__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert not tags.target_tags.required


@pytest.fixture
def embedder(tiny_gpt2_shared):
    return HiddenStateEmbedder(model=tiny_gpt2_shared, layer=1, device="cpu")


def test_init_stores_params_unchanged_and_fit_returns_self(embedder):
    before = embedder.get_params()
    assert not [k for k in vars(embedder) if k.endswith("_")]
    assert embedder.fit(sample_texts(4)) is embedder
    assert embedder.get_params() == before  # fit never rewrites a parameter
    assert embedder.config_.layers == (1,) and embedder.n_features_out_ == 32


def test_transform_before_fit_raises(embedder):
    with pytest.raises(NotFittedError):
        embedder.transform(["hello"])


def test_transform_matches_extractor(embedder, extractor_factory):
    texts = sample_texts(7, seed=5)
    out = embedder.fit(texts).transform(texts)
    assert out.shape == (7, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, extractor_factory(layers=(1,)).embed(texts), atol=1e-6)


def test_fit_idempotent_and_order_and_subset_invariant(embedder):
    texts = sample_texts(9, seed=6)
    first = embedder.fit(texts).transform(texts)
    again = embedder.fit(texts[:3]).transform(texts)
    np.testing.assert_allclose(first, again, atol=1e-6)
    perm = np.random.RandomState(0).permutation(9)
    np.testing.assert_allclose(embedder.transform([texts[i] for i in perm]), first[perm], atol=1e-5)
    np.testing.assert_allclose(embedder.transform(texts[2:5]), first[2:5], atol=1e-5)


def test_clone_is_unfitted_with_same_params(embedder):
    fitted = embedder.fit(["x y"])
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "config_")


def test_pickle_round_trip_reloads_model(embedder):
    texts = sample_texts(5, seed=7)
    fitted = embedder.fit(texts)
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.extractor_ is None  # the torch model is not in the pickle
    np.testing.assert_allclose(restored.transform(texts), fitted.transform(texts), atol=1e-6)


def test_inside_a_pipeline(tiny_gpt2_shared):
    texts = ["money bank loan price market"] * 10 + ["cat dog bird fish tree"] * 10
    labels = ["finance"] * 10 + ["animals"] * 10
    pipe = make_pipeline(HiddenStateEmbedder(model=tiny_gpt2_shared, device="cpu"), LogisticRegression())
    pipe.fit(texts, labels)
    assert list(pipe.predict(["bank loan money", "dog bird cat"])) == ["finance", "animals"]
    assert list(pipe[:-1].get_feature_names_out()[:2]) == ["hiddenstateembedder0", "hiddenstateembedder1"]


def test_accepts_series_and_one_column_frames(embedder):
    pd = pytest.importorskip("pandas")
    texts = sample_texts(3, seed=8)
    embedder.fit(texts)
    expected = embedder.transform(texts)
    np.testing.assert_allclose(embedder.transform(pd.Series(texts)), expected, atol=1e-6)
    np.testing.assert_allclose(embedder.transform(pd.DataFrame({"t": texts})), expected, atol=1e-6)
    np.testing.assert_allclose(embedder.transform(np.array(texts, dtype=object)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message", [("one string", "single string"), ([["a", "b"], ["c", "d"]], "shape"), (["ok", ""], "empty")]
)
def test_bad_input_is_a_clear_error(embedder, bad, message):
    embedder.fit(None)
    with pytest.raises(InputError, match=message):
        embedder.transform(np.array(bad, dtype=object) if isinstance(bad, list) and isinstance(bad[0], list) else bad)


def test_from_features_reproduces_stored_vectors(features_file):
    import pyarrow.parquet as pq

    path = features_file(n=6, layers=(1,), pooling=("last",))
    table = pq.read_table(path)
    embedder = HiddenStateEmbedder.from_features(path, device="cpu").fit()
    assert (embedder.layer, embedder.pooling) == (1, "last")
    stored = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(embedder.transform(table.column("text").to_pylist()), stored, atol=1e-5)
