"""The ONNX graph the runtime backends run (#21): only the requested layers, pooling inside, cached per model.

``torch.onnx.export`` (the TorchScript exporter: no onnxscript needed) traces a wrapper around the loaded model
that catches the requested hidden states with the same hooks as layers.py and pools them with pooling.py, so the
graph's outputs are the [batch, dim] vectors of every (layer, pooling) pair, in float32. Blocks past the deepest
requested layer are dropped from the model while it is traced, so layer k costs about k/12 of GPT-2 here too.

The export lands in embedkit's cache directory (kernel_choice.cache_dir), one directory per key: a digest of the
weights actually run (sampled, so a random-weights twin of a model never shares its entry), the architecture's
config, the layers and poolings, the runtime and the versions of torch and the runtime. It is built aside and
renamed into place under a lock, with a manifest of sizes and sha256 digests (artefact.Staging). A reader checks
the manifest, the key and every file's digest before trusting an entry; one that fails is rebuilt. The runtime
backends also compare the loaded graph's vectors with torch's on a probe batch (runtime_backends.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artefact import _UMASK, Staging, open_dir, output_lock  # _UMASK: read once at import (os.umask is racy)
from ..errors import EmbedkitError
from .kernel_choice import cache_dir
from .pooling import pool

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "export.json"
KIND = "embedkit runtime export"
OPSET = 17
# Entries kept in the cache; the oldest (by last use) go first. An export of GPT-2 small is ~0.5 GB in fp32.
MAX_ENTRIES = 6
# Elements hashed per weight tensor: enough to tell retrained or random weights apart, cheap for any model size.
SAMPLE_ELEMENTS = 4096


def weights_digest(model: nn.Module) -> str:
    """A digest of the weights ``model`` runs: every tensor's name, shape, dtype and a strided sample of values."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLE_ELEMENTS)
        h.update(json.dumps([name, list(tensor.shape), str(tensor.dtype)]).encode())
        h.update(flat[::step][:SAMPLE_ELEMENTS].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def export_key(
    model: nn.Module, layers: tuple[int, ...], pairs: tuple[tuple[int, str], ...], runtime: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """(digest, what it covers) of the export of ``model`` for ``pairs`` run by ``runtime`` ({name, version, ...})."""
    config = getattr(model, "config", None)
    to_json = getattr(config, "to_json_string", None)  # a transformers config; any other model: its class name
    config_json = to_json(use_diff=False) if to_json is not None else type(model).__name__
    covers = {
        "format": FORMAT,
        "opset": OPSET,
        "torch": torch.__version__,
        "runtime": runtime,
        "model_class": type(model).__name__,
        "config": hashlib.sha256(config_json.encode()).hexdigest(),
        "weights": weights_digest(model),
        "layers": sorted(layers),
        "pairs": [list(p) for p in pairs],
    }
    return hashlib.sha256(json.dumps(covers, sort_keys=True).encode()).hexdigest(), covers


class PooledLayers(nn.Module):
    """``model`` run to the deepest requested layer, returning the pooled vector of every (layer, pooling) pair."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, pairs: tuple[tuple[int, str], ...], **extra: Any):
        super().__init__()
        self.model, self.blocks, self.pairs, self.extra = model, blocks, pairs, extra
        self.n_layers = len(blocks)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layers = {layer for layer, _ in self.pairs}
        caught: dict[int, torch.Tensor] = {}
        handles = []
        if 0 in layers:

            def catch_embeddings(_module, args, kwargs):
                caught[0] = args[0] if args else kwargs["hidden_states"]

            handles.append(self.blocks[0].register_forward_pre_hook(catch_embeddings, with_kwargs=True))
        for layer in sorted(layer for layer in layers if 0 < layer < self.n_layers):

            def catch_block(_module, _args, output, layer=layer):
                caught[layer] = output[0] if isinstance(output, (tuple, list)) else output

            handles.append(self.blocks[layer - 1].register_forward_hook(catch_block))
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **self.extra)
        finally:
            for handle in handles:
                handle.remove()
        if self.n_layers in layers:
            caught[self.n_layers] = out.last_hidden_state
        return tuple(pool(caught[layer], attention_mask, mode) for layer, mode in self.pairs)


@contextmanager
def _only_blocks(blocks: nn.ModuleList, keep: int) -> Iterator[None]:
    """Drop the blocks past ``keep`` from the model for the duration (they are put back, in order, after)."""
    saved = list(blocks._modules.items())
    for name, _ in saved[keep:]:
        del blocks._modules[name]
    try:
        yield
    finally:
        blocks._modules.clear()
        blocks._modules.update(saved)


def probe_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second padded: traced with an all-ones mask, transformers may skip the attention mask."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 0, 0, 0]], dtype=torch.long)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3], dtype=torch.long)
    return ids, mask


def export(graph: PooledLayers, path: Path) -> None:
    """Write ``graph`` as ONNX to ``path``: inputs input_ids and attention_mask [batch, tokens], int64."""
    deepest = max(layer for layer, _ in graph.pairs)
    keep = graph.n_layers if deepest >= graph.n_layers else max(deepest, 1)  # layer 0 is caught at block 1's input
    names = [f"pooled_{i}" for i in range(len(graph.pairs))]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
    }
    axes.update({name: {0: "batch"} for name in names})
    with _only_blocks(graph.blocks, keep), torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape in transformers' mask code (each is decided the same
        # way for every input: the mask is as long as the ids) and about index export; the probe check in
        # runtime_backends.py compares the result with torch instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            probe_inputs(),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _valid_entry(directory: Path, covers: dict[str, Any]) -> bool:
    """Whether ``directory`` holds a complete export for ``covers``, every file matching its recorded digest."""
    if not directory.is_dir():
        return False
    try:
        entry = open_dir(directory, manifest_name=MANIFEST, what="runtime export")
    except EmbedkitError as exc:
        log.warning("the cached runtime export %s is not usable (%s); building it again", directory, exc)
        return False
    if entry.manifest.get("kind") != KIND or entry.manifest.get("covers") != covers:
        log.warning("the cached runtime export %s is not the one asked for; building it again", directory)
        return False
    return True


def _evict(root: Path, keep: Path) -> None:
    """Remove the least recently used entries past MAX_ENTRIES (never ``keep``); failures are only logged."""
    try:
        entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=os.path.getmtime)
    except OSError:
        return
    for old in entries[: max(0, len(entries) - MAX_ENTRIES)]:
        if old != keep:
            try:
                with output_lock(old):
                    shutil.rmtree(old)
            except (OSError, EmbedkitError) as exc:  # in use by another process's export: leave it
                log.debug("could not evict %s: %s", old, exc)


def export_dir(graph: PooledLayers, runtime: dict[str, str]) -> Path:
    """Where ``graph``'s export for ``runtime`` is cached (it may not exist yet; ``cached_export`` checks it)."""
    layers = tuple(sorted({layer for layer, _ in graph.pairs}))
    digest, _ = export_key(graph.model, layers, graph.pairs, runtime)
    return cache_dir() / "runtime-export" / digest[:32]


def cached_export(
    graph: PooledLayers, runtime: dict[str, str], finish: Callable[[Path, Staging], None] | None = None
) -> Path:
    """The cache directory holding ``graph``'s export for ``runtime``, built (and ``finish``ed) when missing or bad.

    ``finish(onnx_path, stage)`` turns the fp32 export into what the runtime loads (e.g. a quantised copy); it may
    delete ``onnx_path``. Every file left in the staging directory is listed in the manifest.
    """
    layers = tuple(sorted({layer for layer, _ in graph.pairs}))
    digest, covers = export_key(graph.model, layers, graph.pairs, runtime)
    root = cache_dir() / "runtime-export"
    directory = root / digest[:32]
    if _valid_entry(directory, covers):
        os.utime(directory)  # last use, for eviction
        return directory
    root.mkdir(parents=True, exist_ok=True)
    with output_lock(directory, wait=True):
        if _valid_entry(directory, covers):  # another process built it while this one waited for the lock
            return directory
        if directory.exists():
            shutil.rmtree(directory)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=root))
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes it private; a cache entry gets the usual mode
        try:
            stage = Staging(staging, MANIFEST, KIND)
            onnx_path = stage.path("model.onnx")
            log.info("exporting the model to ONNX for %s (once; cached in %s)", runtime["name"], directory)
            export(graph, onnx_path)
            if finish is not None:
                finish(onnx_path, stage)
            stage.seal({"covers": covers})
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _evict(root, directory)
    return directory


__all__ = ["PooledLayers", "cached_export", "export", "export_dir", "export_key", "probe_inputs", "weights_digest"]
