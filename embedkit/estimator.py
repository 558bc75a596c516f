"""``HiddenStateEmbedder``: a scikit-learn transformer from texts to pooled hidden-state vectors.

    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> clf = make_pipeline(HiddenStateEmbedder(model="gpt2", layer=6), LogisticRegression())
    >>> clf.fit(texts, labels).predict(["a new text"])

(Named ``estimator`` rather than ``sklearn`` so that the module never shadows scikit-learn itself.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .config import ExtractConfig, default_model
from .errors import InputError
from .spec import Runtime


class HiddenStateEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed texts with one hidden layer of a transformer, pooled to one vector per text.

    Follows the scikit-learn estimator contract: ``__init__`` only stores its arguments; ``fit`` loads the model
    (nothing is learned from the texts: the vectors come from pretrained weights) and sets the fitted attributes;
    ``transform`` embeds. ``clone``, ``get_params``/``set_params``, pipelines and grid search work as usual.

    Args:
        model: hub id or local directory [default: ``$EMBEDKIT_MODEL`` or GPT-2 small].
        layer: hidden-state index (0 = embeddings, -1 = last).
        pooling: ``mean``, ``last``, ``max``, ``first`` or ``weighted-mean``.
        max_length: tokens per window [default: the model's limit].
        long_text: ``truncate`` or ``chunk``.
        stride: tokens shared by consecutive windows when chunking.
        normalize: L2-normalise the vectors.
        revision: hub revision.
        trust_remote_code: allow the model's own code to run.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_tokens: padded tokens per forward pass.
        backend: ``torch`` (exact) or ``int8`` (dynamic int8 linear layers on CPU).
        dtype: ``float32``, or ``float16`` to round the vectors as a float16 features file stores them.

    Attributes:
        config_: the resolved ExtractConfig (absolute layer, max_length, stride).
        n_features_out_: the vector dimension.
        extractor_: the loaded :class:`~embedkit.Extractor` (dropped when pickled, reloaded on first use).
    """

    model: str | None
    layer: int
    pooling: str
    max_length: int | None
    long_text: str
    stride: int | None
    normalize: bool
    revision: str | None
    trust_remote_code: bool
    device: str
    batch_tokens: int | None
    backend: str
    dtype: str

    def __init__(
        self,
        model=None,
        layer=-1,
        pooling="mean",
        max_length=None,
        long_text="truncate",
        stride=None,
        normalize=False,
        revision=None,
        trust_remote_code=False,
        device="auto",
        batch_tokens=None,
        backend="torch",
        dtype="float32",
    ):
        # scikit-learn's contract: every argument stored unchanged under its own name (get_params reads them back).
        self.__dict__.update((name, value) for name, value in locals().items() if name != "self")

    @classmethod
    def from_features(
        cls, path: str | Path, column: str | None = None, *, trust_remote_code: bool = False, **runtime
    ) -> HiddenStateEmbedder:
        """An embedder that makes vectors exactly like ``column`` of a features file (runtime: device, batch_tokens).

        ``trust_remote_code`` is yours to give: a value stored in the file is ignored. ``fit`` checks that the model
        is still the one the file was made with (its recorded fingerprint), as long as ``model`` is not changed.
        Every stored setting is used, the backend and storage dtype too: int8 features are matched by int8 vectors.
        """
        from .store import open_features

        feats = open_features(path, trust_remote_code=trust_remote_code)
        config = feats.column_config(feats.embedding_column(column))
        embedder = cls(
            model=config.model,
            layer=config.layers[0],
            pooling=config.pooling[0],
            max_length=config.max_length,
            long_text=config.long_text,
            stride=config.stride,
            normalize=config.normalize,
            revision=config.revision,
            trust_remote_code=trust_remote_code,
            backend=config.backend,
            dtype=config.dtype,
            **runtime,
        )
        # Not an __init__ parameter (clone() drops it): it belongs to this file's model, not to the settings.
        embedder._provenance = (config.model, config.provenance)
        return embedder

    def _config(self) -> ExtractConfig:
        config = ExtractConfig(
            model=self.model or default_model(),
            revision=self.revision,
            layers=(self.layer,),
            pooling=(self.pooling,),
            max_length=self.max_length,
            long_text=self.long_text,
            stride=self.stride,
            normalize=self.normalize,
            trust_remote_code=self.trust_remote_code,
            backend=self.backend,
            dtype=self.dtype,
        )
        model, provenance = getattr(self, "_provenance", (None, None))
        return config.replace(provenance=provenance) if provenance and config.model == model else config

    def fit(self, X=None, y=None):
        """Validate the parameters and load the model; ``X`` is checked to be texts and otherwise unused.

        Returns:
            self
        """
        if X is not None:
            _as_texts(X)
        self.extractor_ = Runtime(self.device, self.batch_tokens).extractor(self._config())
        self.config_ = self.extractor_.config
        self.n_features_out_ = self.extractor_.dim
        return self

    def transform(self, X) -> np.ndarray:
        """Embed texts into an [n, n_features_out_] float32 array.

        Raises:
            InputError: ``X`` is not a sequence of texts, or a text is missing or empty.
        """
        check_is_fitted(self, "config_")
        texts = _as_texts(X)
        if not texts:
            return np.empty((0, self.n_features_out_), dtype=np.float32)
        vectors = self._extractor().embed(texts)
        if self.config_.dtype == "float16":  # as a float16 features file holds them, so both compare equal
            vectors = vectors.astype(np.float16).astype(np.float32)
        return vectors

    def _extractor(self):
        if getattr(self, "extractor_", None) is None:  # unpickled: load the model again, same settings
            self.extractor_ = Runtime(self.device, self.batch_tokens).extractor(self.config_)
        return self.extractor_

    @property
    def _n_features_out(self) -> int:  # used by ClassNamePrefixFeaturesOutMixin.get_feature_names_out
        return self.n_features_out_

    def __getstate__(self):
        # The loaded torch model is large and device-bound: pickles (joblib workers, saved pipelines) carry the
        # settings only and the model is reloaded on first use.
        state = super().__getstate__()
        state["extractor_"] = None
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Input is text: a 1-D sequence of strings, not a numeric 2-D array (as for CountVectorizer). With
        # two_d_array False, sklearn's generic checks, which all feed random numeric matrices, are skipped by
        # parametrize_with_checks; tests/test_sklearn_embedder.py runs the API checks that do not need numeric
        # input directly and re-does the rest (fit returns self, idempotence, order/subset invariance, pickling)
        # with texts.
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = []  # output is float32 whatever the input
        return tags


def _as_texts(X) -> list:
    """A list of texts from a list, tuple, 1-D array, pandas Series, or a one-column 2-D array/DataFrame."""
    if isinstance(X, (str, bytes)):
        raise InputError("expected a sequence of texts, got a single string: wrap it in a list")
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # a DataFrame from a ColumnTransformer column list
        if X.shape[1] != 1:
            raise InputError(f"expected one text column, got a DataFrame with {X.shape[1]} columns")
        X = X.iloc[:, 0]
    if hasattr(X, "tolist") and getattr(X, "ndim", 1) == 2:
        if X.shape[1] != 1:
            raise InputError(f"expected a 1-D sequence of texts, got an array of shape {X.shape}")
        X = X[:, 0]
    if not isinstance(X, Sequence) and not hasattr(X, "__array__") and not hasattr(X, "tolist"):
        raise InputError(f"expected a sequence of texts, got {type(X).__name__}")
    values = X.tolist() if hasattr(X, "tolist") else list(X)
    return values


__all__ = ["HiddenStateEmbedder"]
