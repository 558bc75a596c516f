"""Loading any Hugging Face ``AutoModel`` and its tokenizer, safely, with clear errors offline."""

from __future__ import annotations

import fnmatch
import gc
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import DEVICES, MODEL_ENV, ExtractConfig, local_model_dir
from ..errors import ConfigError, EmbedkitError, IncompatibleError, ModelLoadError, choice_error

if TYPE_CHECKING:  # transformers is imported lazily at run time (it is slow to import)
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# What a model fingerprint covers: the files AutoConfig, AutoTokenizer and AutoModel read (and a model's own
# code), not a README or training leftovers, so editing documentation never makes an artefact refuse its model.
MODEL_FILE_PATTERNS = (
    "config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "*.tiktoken",
    "*.safetensors",
    "*.bin",
    "*.index.json",
    "*.py",
)
NOT_MODEL_FILES = ("training_args.bin",)
# Files up to this size are hashed whole (config, tokenizer, the weights of small models: ~3 MB for GPT-2's
# tokenizer, a few ms). Larger files (weights) are fingerprinted by their size and SAMPLE_BLOCKS blocks spread
# over the file, the first holding the safetensors header (tensor names, shapes, dtypes, offsets). Measured on the
# 2-core dev machine, page cache warm, for a GPT-2-small-sized directory: 4 ms (18 ms cold) where hashing the
# 548 MB of weights alone takes 0.47 s, and GPT-2 XL's 6 GB several seconds, on every `search` cold start (#23).
# Retrained or other weights differ in every block, so sampling catches a replaced checkpoint; it guards against
# using the wrong model by mistake, not against a forger, who could as well edit the stored fingerprint (whether
# a model's code may run is what --trust-remote-code decides).
FULL_HASH_BYTES = 16 << 20
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 64 << 10


def fingerprint_directory(directory: Path) -> str:
    """A cheap content fingerprint of a local model directory (see MODEL_FILE_PATTERNS, FULL_HASH_BYTES)."""
    h = hashlib.sha256()
    files = sorted(
        f
        for f in directory.iterdir()
        if f.is_file()
        and f.name not in NOT_MODEL_FILES
        and any(fnmatch.fnmatch(f.name, pattern) for pattern in MODEL_FILE_PATTERNS)
    )
    for f in files:
        try:
            with f.open("rb") as fh:
                size = fh.seek(0, 2)
                h.update(json.dumps([f.name, size]).encode())
                if size <= FULL_HASH_BYTES:
                    fh.seek(0)
                    h.update(fh.read())
                    continue
                for i in range(SAMPLE_BLOCKS):
                    fh.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1))
                    h.update(fh.read(SAMPLE_BYTES))
        except OSError as exc:
            raise ModelLoadError(f"cannot read {f} of the model: {exc}") from exc
    return "sha256:" + h.hexdigest()


def _check_expected(config: ExtractConfig, name: str, found: str | None) -> None:
    """IncompatibleError unless the model about to be used is the one the artefact's vectors were made with."""
    stored = config.provenance
    if stored is None:
        return  # settings given by the caller: nothing to compare with
    if stored.fingerprint is None:
        log.info("%s records no model fingerprint (older artefacts do not): %s is used unchecked", stored.origin, name)
        return
    if found is not None and found != stored.fingerprint:
        raise IncompatibleError(
            f"the model at {name} is not the one {stored.origin} was made with: its files changed since (fingerprint "
            f"{found[:19]}, recorded {stored.fingerprint[:19]}). Its vectors would not be comparable; point the model "
            "path back at the original model, or re-create the artefact with this one."
        )


_warned: set[str] = set()


def _warn_ignored_trust(config: ExtractConfig) -> None:
    """Say (once per artefact and process) that an artefact's own trust_remote_code was not used, and how to opt in."""
    stored = config.provenance
    if stored is None or not stored.asked_for_remote_code or config.trust_remote_code or stored.origin in _warned:
        return
    _warned.add(stored.origin)
    log.warning(
        "%s stores trust_remote_code = true; ignored: a file cannot allow a model's own code to run. "
        "If you trust the model, pass --trust-remote-code (trust_remote_code=True in Python).",
        stored.origin,
    )


@dataclass
class LoadedModel:
    """A model ready for feature extraction, with the facts the extractor and the metadata need."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    blocks: nn.ModuleList
    n_layers: int
    hidden_size: int
    max_positions: int
    name: str  # a local directory as an absolute path, else the hub id
    revision: str | None  # the hub commit hash when known, else the revision asked for
    model_type: str
    device: torch.device
    fingerprint: str | None = None  # see fingerprint_directory; "commit:<hash>" for a hub model


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise choice_error("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(device)


def find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The model's list of transformer blocks: the first ModuleList holding exactly ``n_layers`` modules.

    This covers GPT-2 (``h``), BERT (``encoder.layer``), Llama-style (``layers``) and most others without a
    table of architectures.
    """
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ModelLoadError(
        f"cannot find the {n_layers} transformer blocks of {type(model).__name__}; "
        "embedkit needs a model whose blocks sit in one ModuleList"
    )


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that looks like a path is treated as one.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or local_model_dir(name) is not None


def _offline_message(name: str, cause: Exception) -> str:
    return (
        f"could not load model {name!r}: it is not in the local Hugging Face cache and the hub could not be "
        f"reached ({type(cause).__name__}). Point --model (or ${MODEL_ENV}) at a local directory holding "
        "config.json, the weights and the tokenizer files (for example one written by save_pretrained), "
        "or run once with network access to fill the cache."
    )


def _hub_unreachable(name: str) -> bool:
    """Whether ``name`` is a hub id and the hub cannot be reached right now (one quick request, no retries).

    Without this, huggingface_hub retries a failed connection five times with back-off (about 25 s, a screen of
    warnings) for each file before transformers falls back to the cache. One probe lets an offline machine load
    a cached model, or get the "point --model at a directory" message, at once.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE or _looks_like_path(name):
        return False  # the hub library already stays off the network, or there is no network to ask
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:  # noqa: BLE001  (DNS, refused, timeout, proxy: the http client's error types vary by version)
        return True
    return False


def _from_pretrained(loader, name: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except (EmbedkitError, MemoryError):
        raise
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        text = str(exc)
        if "trust_remote_code" in text:
            raise ModelLoadError(
                f"model {name!r} needs its own Python code to run; pass --trust-remote-code if you trust it"
            ) from exc
        if local_model_dir(name) is not None:
            raise ModelLoadError(f"could not load {name!r} as a Hugging Face model directory: {text}") from exc
        if _looks_like_path(name):
            raise ModelLoadError(f"model directory {name!r} does not exist") from exc
        raise ModelLoadError(_offline_message(name, exc)) from exc
    except Exception as exc:  # noqa: BLE001
        # A hostile or damaged config.json (wrong types, missing keys) makes transformers fail with whatever
        # error the code reading it hits (KeyError, TypeError, AttributeError, ...): the model cannot be loaded.
        raise ModelLoadError(_broken_message(name, loader, exc)) from exc


def _broken_message(name: str, loader, exc: Exception) -> str:
    what = {"AutoConfig": "config.json is", "AutoTokenizer": "tokenizer files are"}.get(
        getattr(loader, "__name__", ""), "files are"
    )
    return (
        f"could not load model {name!r}: its {what} broken or not what transformers expects "
        f"({type(exc).__name__}: {exc})"
    )


def _hub_commit(name: str, revision: str | None, model_config) -> str | None:
    """The commit of the hub snapshot a model id was just loaded from (None if it cannot be told).

    Older transformers kept it on the config (``_commit_hash``); newer ones do not, so ask the local cache which
    snapshot the revision points at. A download updates that pointer, so this is the snapshot just read, and
    it costs no request to the hub.
    """
    commit = getattr(model_config, "_commit_hash", None)
    if not commit:
        from huggingface_hub import try_to_load_from_cache
        from transformers.utils.hub import extract_commit_hash

        try:
            resolved = try_to_load_from_cache(name, "config.json", revision=revision)
        except Exception:  # noqa: BLE001  (an id the cache cannot hold: no commit to record)
            resolved = None
        commit = extract_commit_hash(resolved, None) if isinstance(resolved, str) else None
    return commit if isinstance(commit, str) and commit else None


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar unless embedkit's own log shows INFO (``-v``).

    A sub-second bar on every model load buried the one summary line a command prints; transformers' switch is
    process-wide, so it is put back as it was.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not log.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a model loads, back as it was afterwards.

    Loading allocates ~10^5 small objects that live as long as the model (the tokenizer's vocabulary and merges
    pass through Python dicts and tuples, transformers builds ~1,200 weight-renaming rules). Each time such new
    objects reach a quarter of those already tracked, CPython walks every tracked object, and after importing
    torch and transformers that is ~400,000 of them: one such pass cost 0.2 s CPU of a one-query `search`
    (#23, RESULTS.md). Loading makes no garbage cycles worth collecting, so skipping those passes frees nothing
    later. Not around the imports: those are the same work as in any program that uses torch.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_model(config: ExtractConfig, device: str = "auto") -> LoadedModel:
    """Load ``config.model`` (hub id, local directory or cached id) for inference.

    Safetensors weights are preferred; a checkpoint that only has pickled ``.bin`` weights is loaded with
    transformers' restricted (weights-only) unpickler and a warning. Remote code runs only when
    ``config.trust_remote_code`` is set.
    """
    # Imported before the pause: importing is the same work in any program that uses transformers.
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401

    with _collector_paused():
        return _load_model(config, device)


def _load_model(config: ExtractConfig, device: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch_device = resolve_device(device)
    _warn_ignored_trust(config)
    directory = local_model_dir(config.model)
    local = directory is not None
    name = str(directory) if local else config.model
    fingerprint = None
    if directory is not None:
        # Checked before anything is loaded: a replaced checkpoint is refused without running any of it.
        fingerprint = fingerprint_directory(directory)
        _check_expected(config, name, fingerprint)
    common = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if _hub_unreachable(name):
        log.info("the Hugging Face hub cannot be reached; loading %s from the local cache only", name)
        common["local_files_only"] = True
    model_config = _from_pretrained(AutoConfig, name, **common)
    commit = None if local else _hub_commit(name, config.revision, model_config)
    if not local:
        # A hub model is named by the commit its files came from: the same id can move to other weights.
        fingerprint = f"commit:{commit}" if commit else None
        _check_expected(config, name, fingerprint)
    tokenizer = _from_pretrained(AutoTokenizer, name, **common)
    try:
        with _quiet_transformers():
            model = AutoModel.from_pretrained(
                name, config=model_config, use_safetensors=True, dtype=torch.float32, **common
            )
    except (EmbedkitError, MemoryError):
        raise
    except (OSError, ValueError) as exc:
        if "safetensors" not in str(exc).lower():
            raise ModelLoadError(f"could not load the weights of {name!r}: {exc}") from exc
        log.warning("%s has no safetensors weights; loading .bin weights with the weights-only unpickler", name)
        model = _from_pretrained(
            AutoModel, name, config=model_config, use_safetensors=False, dtype=torch.float32, **common
        )
    except Exception as exc:  # noqa: BLE001  (a hostile config makes the model class fail in arbitrary ways)
        raise ModelLoadError(_broken_message(name, AutoModel, exc)) from exc
    try:
        model.eval().requires_grad_(False).to(torch_device)
        n_layers = int(model_config.num_hidden_layers)
        hidden_size = int(model_config.hidden_size)
        max_positions = getattr(model_config, "max_position_embeddings", None) or getattr(
            model_config, "n_positions", None
        )
        tok_limit = getattr(tokenizer, "model_max_length", None)
        candidates = [int(x) for x in (max_positions, tok_limit) if x and x < 1_000_000]
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelLoadError(_broken_message(name, AutoConfig, exc)) from exc
    if n_layers < 1 or hidden_size < 1:
        raise ModelLoadError(
            f"could not load model {name!r}: its config.json gives {n_layers} layers of width "
            f"{hidden_size}; a model needs at least one layer of at least one unit"
        )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        blocks=find_blocks(model, n_layers),
        n_layers=n_layers,
        hidden_size=hidden_size,
        max_positions=min(candidates) if candidates else 512,
        name=name if local else config.model,
        revision=commit or config.revision,
        model_type=str(getattr(model_config, "model_type", "unknown")),
        device=torch_device,
        fingerprint=fingerprint,
    )
