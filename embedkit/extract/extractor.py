"""The Extractor: texts in, pooled hidden-state vectors out, exactly as a one-text-at-a-time reference."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ExtractConfig, Provenance
from ..errors import ConfigError, IncompatibleError, InputError
from . import backend_choice
from .backends import convert, pick_kernels, prepare, speed_up, threads_for
from .batching import (
    MAX_CHUNK_WINDOWS,
    MIN_PIECE_CHARS,
    SpecialTokens,
    max_token_chars,
    piece_chars,
    plan_batches,
    split_windows,
    tokenize_prefix,
)
from .layers import run_to_layers
from .model import LoadedModel, load_model
from .pooling import combine_windows, pool
from .runtime_backends import RUNTIME_ENGINES, export_ready, forget, runner_for
from .texts import CUT_STATUS, CheckedText, check_text

log = logging.getLogger(__name__)

# Padded tokens per forward pass. Measured on a 2-core CPU with GPT-2 small (benchmarks/throughput.py, RESULTS.md):
# 512 tokens/s ~644, 1,024 ~604, 2,048 ~539, 4,096 slower still. Small batches keep a block's activations
# ([512, 3072] floats = 6 MB) in cache, and matrix multiplies of 512 rows already run at the GEMM roof (the
# profile is 87% addmm), so bigger batches only add cache misses and attention over longer padded rows.
DEFAULT_BATCH_TOKENS = 512
DEFAULT_CUDA_BATCH_TOKENS = 65536

ProgressFn = Callable[[int, int], None]  # (texts finished, tokens run)


@dataclass
class EncodeResult:
    """Everything known about a list of texts after extraction, in input order.

    ``vectors`` maps each embedding column name to an [n, dim] float32 array; rows that could not be embedded
    are NaN there and have ``valid`` False, with the reason in ``status``/``error``.
    """

    vectors: dict[str, np.ndarray]
    n_tokens: np.ndarray  # int32: tokens of the whole text (special tokens included); of the part read if ``cut``
    n_windows: np.ndarray  # int32: windows the text was run in (0 for rows not embedded)
    truncated: np.ndarray  # bool: tokens beyond max_length were dropped
    status: list[str]
    error: list[str | None]

    @property
    def valid(self) -> np.ndarray:
        return self.n_windows > 0


def resolve_config(config: ExtractConfig, loaded: LoadedModel) -> ExtractConfig:
    """Make every setting explicit for this model: absolute layers, max_length and stride."""
    n = loaded.n_layers
    layers = []
    for layer in config.layers:
        if not -(n + 1) <= layer <= n:
            raise ConfigError(
                f"layer {layer} is out of range for {loaded.name} ({n} blocks): use 0..{n} or -{n + 1}..-1 "
                f"(0 = embeddings, {n} or -1 = final output)"
            )
        layers.append(layer % (n + 1))
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers {list(config.layers)} name the same layer twice ({layers} absolute)")
    max_length = config.max_length or loaded.max_positions
    if max_length > loaded.max_positions:
        raise ConfigError(f"max_length {max_length} exceeds the model's limit of {loaded.max_positions} tokens")
    specials = len(SpecialTokens.of(loaded.tokenizer))
    stride = config.stride if config.stride is not None else max_length // 8
    if stride >= (max_length - specials) // 2:
        raise ConfigError(f"stride {stride} must be less than half of max_length {max_length}")
    return config.replace(layers=tuple(layers), max_length=max_length, stride=stride)


def _cut(checked: CheckedText, chars: int, mode: str) -> CheckedText:
    """The record of a text that was cut before the end (embedded from its start; see batching.py)."""
    used = "the first max_length tokens" if mode != "chunk" else f"the first {MAX_CHUNK_WINDOWS} windows"
    note = f"text of {chars:,} characters cut: only {used} were tokenised and embedded; n_tokens counts those"
    return CheckedText(checked.text, CUT_STATUS, note if checked.error is None else f"{note}; {checked.error}")


def check_tokens(ids: Sequence[int] | None) -> CheckedText:
    """The status of one pre-tokenised row; the text itself is not needed, so "" stands for a usable row."""
    if ids is None:
        return CheckedText(None, "null", "missing token ids")
    if len(ids) == 0:
        return CheckedText(None, "empty", "no token ids")
    return CheckedText("", "ok")


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class Extractor:
    """Batched hidden-state feature extraction.

    Args:
        config: what to extract (defaults to the last layer of GPT-2 small, mean pooling).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``. On CUDA the forward pass runs under
            bf16 (or fp16) autocast; pooling is always done in float32.
        batch_tokens: padded tokens per forward pass.
        threads: CPU threads for torch (None keeps torch's default).
        job_tokens: about how many tokens this extractor is about to embed, when the caller knows (the embed
            driver does). Backends ``auto`` and ``bf16`` choose their engine by a cached measurement, measured
            only for a job of at least ``backend_choice.MEASURE_AFTER_TOKENS``; ``engine`` and ``backend_note``
            say what runs, and ``config.backend`` what is recorded (auto's choice: ``torch`` or ``openvino``).
        engine: run on this engine of the backend's candidates without choosing (benchmarks and tests compare
            them); ConfigError when the backend cannot run on it here.

    Example:
        >>> ex = Extractor(ExtractConfig(model="gpt2-dir", layers=(6,), pooling=("mean",)))
        >>> ex.embed(["a text", "another"]).shape
        (2, 768)
    """

    def __init__(
        self,
        config: ExtractConfig | None = None,
        *,
        device: str = "auto",
        batch_tokens: int | None = None,
        threads: int | None = None,
        job_tokens: int | None = None,
        engine: str | None = None,
    ) -> None:
        config = config or ExtractConfig()
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        # The runtime backends compile once for this count (tiny jobs run torch on one thread: threads_for).
        self._threads = torch.get_num_threads()
        self.loaded = load_model(config, device)
        # The engine that computes the vectors (backend_choice.py): a backend's only one, or, for auto and bf16, a
        # choice made below; until then the model is prepared as torch (fused, not converted, not packed).
        engines = backend_choice.candidates(config.backend, self.loaded.device)
        if engine is not None:
            if engine not in engines:
                raise ConfigError(
                    f"backend {config.backend!r} cannot run on engine {engine!r} here; it may run on: "
                    f"{', '.join(engines)}"
                )
            engines = (engine,)
        self.engine = engines[0] if len(engines) == 1 else "torch"
        self.backend_note = ""
        self._converted: set[str] = {self.engine} if len(engines) == 1 else set()
        self.loaded.model = prepare(self.loaded.model, config.backend, self.loaded.device, self.engine)
        # A KV cache is only useful for generation; building one costs a copy of every key and value.
        self._extra_inputs = {"use_cache": False} if _accepts(self.loaded.model, "use_cache") else {}
        try:
            self.config = resolve_config(config, self.loaded)
        except ConfigError as exc:
            if config.provenance is None:
                raise  # the caller's own options: a usage error
            # Settings read from an artefact that this model cannot honour: no option of this command fixes that.
            raise IncompatibleError(
                f"{config.provenance.origin}: its stored settings do not fit the model {self.loaded.name}: {exc}"
            ) from exc
        # The config names the model by path or id only; carrying the loaded model's fingerprint lets an index or a
        # classifier tell a replaced checkpoint from its own (ExtractConfig.model_difference) whoever built this.
        max_length, stride = self.config.max_length, self.config.stride
        assert max_length is not None and stride is not None  # resolve_config made both explicit
        self.max_length, self.stride = max_length, stride
        known = config.provenance or Provenance("an embedder loaded earlier")  # when this config is reused
        self.config = self.config.replace(provenance=dataclasses.replace(known, fingerprint=self.loaded.fingerprint))
        on_cuda = self.loaded.device.type == "cuda"
        self.batch_tokens = batch_tokens or (DEFAULT_CUDA_BATCH_TOKENS if on_cuda else DEFAULT_BATCH_TOKENS)
        if self.batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be at least 1, got {self.batch_tokens}")
        self._specials = SpecialTokens.of(self.loaded.tokenizer)
        tok = self.loaded.tokenizer
        # GPT-2 has no pad token. Any id works for padding on the right since the attention mask hides it
        # and causal attention never looks right; the caller's tokenizer is never changed.
        self._pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        if len(engines) > 1:
            choice = backend_choice.choose(self, config.backend, engines, job_tokens)
            self.use_engine(choice.engine)
            if choice.engine not in RUNTIME_ENGINES:
                forget(self.loaded.model)  # runtime graphs compiled only to be timed: their memory goes back now
            self.backend_note = choice.note
            log.info("backend %s runs on %s", config.backend, choice.note)
        self.config = self.config.replace(backend=backend_choice.recorded(config.backend, self.engine))

    def use_engine(self, engine: str, *, measuring: bool = False) -> None:
        """Run on ``engine`` from now on (one of the backend's candidates), converting the model on its first use.

        ``measuring``: the torch engine picks its CPU kernels now, to be timed as a large job would run it.
        """
        if engine not in self._converted:
            if engine == "torch":
                if measuring:
                    pick_kernels(self.loaded.model, self.loaded.device)
            else:
                self.loaded.model = convert(self.loaded.model, engine, self.loaded.device)
            self._converted.add(engine)
        self.engine = engine

    def export_ready(self, engine: str) -> bool:
        """Whether runtime ``engine`` can run this model without an ONNX export first (runtime_backends.py)."""
        pairs = tuple(self.config.pairs)
        return export_ready(self.loaded.model, self.loaded.blocks, engine, pairs, self._extra_inputs)

    def run_batch(self, windows: list[list[int]]) -> list[torch.Tensor]:
        """The pooled vectors of one batch of token windows (special tokens included), on the current engine."""
        return self._forward(windows)

    @functools.cached_property
    def piece_chars(self) -> int:
        """Texts longer than this are tokenised in pieces and only as far as they are used (batching.py).

        Worked out on first need, for a text longer than MIN_PIECE_CHARS: it reads the whole vocabulary, which
        cost every model load (a one-query search included) a tenth of a second or more.
        """
        return piece_chars(self.max_length, max_token_chars(self.loaded.tokenizer))

    def _is_long(self, text: str) -> bool:
        return len(text) > MIN_PIECE_CHARS and len(text) > self.piece_chars

    def _content_tokens(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Content tokens of each text (no special tokens) and whether it was cut before the end.

        Texts of at most ``piece_chars`` characters are tokenised whole, in one call for speed; longer ones in
        pieces, only up to the tokens the long-text mode can use, so memory per row stays bounded.
        """
        cfg, tok = self.config, self.loaded.tokenizer
        budget = self.max_length - len(self._specials)
        wanted = budget if cfg.long_text != "chunk" else budget + (MAX_CHUNK_WINDOWS - 1) * (budget - self.stride)
        short = [i for i, t in enumerate(texts) if not self._is_long(t)]
        ids: list[list[int]] = [[] for _ in texts]
        cut = [False] * len(texts)
        if short:
            encoded = tok([texts[i] for i in short], add_special_tokens=False, verbose=False)["input_ids"]
            for i, row in zip(short, encoded):
                ids[i] = row
        for i, text in enumerate(texts):
            if self._is_long(text):
                ids[i], cut[i] = tokenize_prefix(
                    lambda piece: tok(piece, add_special_tokens=False, verbose=False)["input_ids"],
                    text,
                    self.piece_chars,
                    wanted,
                )
            if cfg.long_text == "chunk" and len(ids[i]) > wanted:  # past its windows: the rest is not embedded
                ids[i], cut[i] = ids[i][:wanted], True
        return ids, cut

    @property
    def columns(self) -> list[str]:
        return self.config.column_names()

    @property
    def dim(self) -> int:
        return self.loaded.hidden_size

    @property
    def vocab_size(self) -> int:
        """Token ids ``encode_tokens`` accepts: 0 .. vocab_size - 1."""
        embeddings = self.loaded.model.get_input_embeddings()  # type: ignore[operator]  # torch types it loosely
        return int(getattr(embeddings, "num_embeddings", None) or len(self.loaded.tokenizer))

    def _autocast(self):
        if self.loaded.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _forward(self, windows: list[list[int]]) -> list[torch.Tensor]:
        """Pooled vectors [batch, dim] for every (layer, pooling) pair of one padded batch."""
        longest = max(len(w) for w in windows)
        ids = torch.full((len(windows), longest), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(windows), longest), dtype=torch.long)
        for row, window in enumerate(windows):
            ids[row, : len(window)] = torch.tensor(window, dtype=torch.long)
            mask[row, : len(window)] = 1
        if self.engine in RUNTIME_ENGINES:  # OpenVINO / ONNX Runtime: the graph pools (runtime_backends.py)
            runner = runner_for(
                self.loaded.model,
                self.loaded.blocks,
                self.engine,
                tuple(self.config.pairs),
                self._extra_inputs,
                threads=self._threads,
            )
            return [torch.from_numpy(v) for v in runner(ids.numpy(), mask.numpy())]
        device = self.loaded.device
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode(), self._autocast():
            hidden = run_to_layers(
                self.loaded.model,
                self.loaded.blocks,
                set(self.config.layers),
                input_ids=ids,
                attention_mask=mask,
                **self._extra_inputs,
            )
            return [pool(hidden[layer], mask, mode).cpu() for layer, mode in self.config.pairs]

    def tokenize(self, texts: Sequence[object]) -> tuple[list[CheckedText], list[list[int] | None]]:
        """Check every text and tokenise the usable ones (content tokens, no special tokens); None marks a bad row.

        Texts past the row budget are tokenised only as far as they are used and marked ``cut`` (see batching.py).
        """
        checked: list[CheckedText] = [check_text(t) for t in texts]
        contents: list[list[int] | None] = [None] * len(checked)
        text_of = {i: c.text for i, c in enumerate(checked) if c.text is not None}  # row: text, rows with one
        if text_of:
            content, cut_rows = self._content_tokens(list(text_of.values()))
            for row, ids, cut_row in zip(text_of, content, cut_rows):
                contents[row] = list(ids)
                if cut_row:
                    checked[row] = _cut(checked[row], len(text_of[row]), self.config.long_text)
        return checked, contents

    def encode(self, texts: Sequence[object], progress: ProgressFn | None = None) -> EncodeResult:
        """Extract every configured column for ``texts``; bad values are recorded, never raised."""
        checked, contents = self.tokenize(texts)
        return self.encode_tokens(contents, progress, checked=checked)

    def encode_tokens(
        self,
        contents: Sequence[Sequence[int] | None],
        progress: ProgressFn | None = None,
        *,
        checked: Sequence[CheckedText] | None = None,
    ) -> EncodeResult:
        """``encode`` for texts already tokenised: content token ids without the special tokens the model adds.

        Several callers' texts can be tokenised apart and run here together, so they share the same
        length-sorted batches (the server merges concurrent requests this way). ``checked`` carries each row's
        status; a None content is a row that cannot be embedded.
        """
        n, cfg = len(contents), self.config
        if checked is None:
            checked = [check_tokens(c) for c in contents]
        vocab = self.vocab_size
        for row, ids in enumerate(contents):
            if ids is not None and any(not 0 <= t < vocab for t in ids):
                # An id past the embedding table is an IndexError deep inside the model, for the whole batch.
                raise InputError(f"token ids of row {row} must lie in 0..{vocab - 1} (this model's vocabulary)")
        n_tokens = np.zeros(n, dtype=np.int32)
        n_windows = np.zeros(n, dtype=np.int32)
        truncated = np.zeros(n, dtype=bool)
        windows: list[list[int]] = []
        owner: list[int] = []  # row of each window; a row's windows are contiguous
        first_window = np.zeros(n, dtype=np.int64)
        for row, ids in enumerate(contents):
            if ids is None or checked[row].text is None:
                continue
            row_windows, cut = split_windows(
                list(ids), self._specials, self.max_length, self.stride, chunk=cfg.long_text == "chunk"
            )
            n_tokens[row] = len(ids) + len(self._specials)
            n_windows[row] = len(row_windows)
            truncated[row] = cut or checked[row].status == CUT_STATUS  # a cut text was truncated before tokens
            first_window[row] = len(windows)
            windows.extend(row_windows)
            owner.extend([row] * len(row_windows))

        pooled = [np.empty((len(windows), self.dim), dtype=np.float32) for _ in cfg.pairs]
        # The CPU kernels are picked (and the weights packed) only for jobs big enough to repay it, and tiny jobs
        # run on one thread (backends.py).
        job_tokens = sum(len(w) for w in windows)
        speed_up(self.loaded.model, self.loaded.device, job_tokens)
        remaining = n_windows.copy()
        with threads_for(self.loaded.device, job_tokens):
            for batch in plan_batches([len(w) for w in windows], self.batch_tokens):
                outs = self._forward([windows[i] for i in batch])
                for column, batch_out in zip(pooled, outs):
                    column[batch] = batch_out.numpy()
                if progress is not None:
                    rows = [owner[i] for i in batch]
                    np.subtract.at(remaining, rows, 1)
                    progress(len({r for r in rows if remaining[r] == 0}), sum(len(windows[i]) for i in batch))

        vectors = {name: np.full((n, self.dim), np.nan, dtype=np.float32) for name in self.columns}
        single = np.flatnonzero(n_windows == 1)
        window_lens = torch.tensor([len(w) for w in windows], dtype=torch.float32)
        for (_, mode), name, column in zip(cfg.pairs, self.columns, pooled):
            out = vectors[name]
            out[single] = column[first_window[single]]
            for many in np.flatnonzero(n_windows > 1):  # rows of several windows
                span = slice(first_window[many], first_window[many] + n_windows[many])
                out[many] = combine_windows(torch.from_numpy(column[span]), window_lens[span], mode).numpy()
            if cfg.normalize:
                norms = np.linalg.norm(out, axis=1, keepdims=True)
                np.divide(out, np.maximum(norms, 1e-12), out=out)
        return EncodeResult(
            vectors=vectors,
            n_tokens=n_tokens,
            n_windows=n_windows,
            truncated=truncated,
            status=[c.status for c in checked],
            error=[c.error for c in checked],
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
        """Embed ``texts``: an [n, dim] array for one (layer, pooling) pair, else a dict by column name.

        Raises:
            InputError: a text is missing, empty or not a string (use ``encode`` to record such rows instead).
        """
        if isinstance(texts, str):
            raise InputError("embed() takes a list of texts, not a single string: wrap it in a list")
        result = self.encode(list(texts))
        bad = np.flatnonzero(~result.valid)
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{bad.size} text(s) cannot be embedded; the first, at index {i}, is {result.status[i]}: "
                f"{result.error[i]}"
            )
        if len(result.vectors) == 1:
            return next(iter(result.vectors.values()))
        return result.vectors
