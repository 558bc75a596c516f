"""What the server holds warm: loaded indexes and classifiers, and one model (Extractor + worker) per settings.

Extraction settings come from each artefact (``Index.config``, ``ClassifierModel.config``), so a served vector
is exactly what ``embedkit embed`` stored. Artefacts with the same vector settings share one loaded model and
one worker. ``trust_remote_code`` is the caller's flag only: whatever an artefact stored is replaced by it.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import ExtractConfig, default_model
from ..errors import ConfigError, IncompatibleError
from .batcher import MicroBatcher
from .metrics import Metrics
from .settings import ServeSettings

log = logging.getLogger(__name__)


@dataclass
class Embedder:
    """One loaded model and the worker that owns it."""

    key: str  # its vector settings as canonical JSON: equal keys, equal vectors
    extractor: Any
    batcher: MicroBatcher

    @property
    def config(self) -> ExtractConfig:
        return self.extractor.config

    @property
    def dim(self) -> int:
        return self.extractor.dim


def _one_thread(name: str) -> ThreadPoolExecutor:
    # One thread per artefact, always the same one: FAISS and BLAS start an OpenMP team (and malloc an arena) per
    # calling thread, so spreading searches over a pool of threads grew private memory by 328 MB over 10,000
    # searches. One thread also keeps FAISS knobs that search_vectors sets and restores to one call at a time.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


@dataclass
class _Served:
    """An artefact a request names, with the embedder of its settings and the one thread that runs its work."""

    name: str
    embedder: Embedder
    executor: ThreadPoolExecutor = field(init=False)
    job = "work"  # the thread's name: embedkit-{job}-{name}

    def __post_init__(self) -> None:
        self.executor = _one_thread(f"embedkit-{self.job}-{self.name}")


@dataclass
class ServedIndex(_Served):
    index: Any  # embedkit.index.Index
    job = "search"


@dataclass
class ServedClassifier(_Served):
    model: Any  # embedkit.classify.ClassifierModel
    job = "predict"


@dataclass
class Services:
    """Everything loaded, by the names requests use. ``models`` maps each ``model`` id to its embedder."""

    models: dict[str, Embedder]
    indexes: dict[str, ServedIndex]
    classifiers: dict[str, ServedClassifier]

    @property
    def embedders(self) -> list[Embedder]:
        return list({id(e): e for e in self.models.values()}.values())

    def start(self) -> None:
        for embedder in self.embedders:
            embedder.batcher.start()

    def close(self) -> None:
        for embedder in self.embedders:
            embedder.batcher.close()
        for executor in [
            *(s.executor for s in self.indexes.values()),
            *(s.executor for s in self.classifiers.values()),
        ]:
            executor.shutdown(wait=True)

    def summary_lines(self) -> list[str]:
        """One line per served name, for the console at start."""
        lines = []
        for name, embedder in self.models.items():
            what = "index" if name in self.indexes else "classifier" if name in self.classifiers else "model"
            cfg = embedder.config
            lines.append(
                f"{what} {name}: {cfg.model} layer {cfg.layers[0]} {cfg.pooling[0]} pooling, "
                f"{embedder.dim}-d{', normalized' if cfg.normalize else ''}"
            )
        shared = len(self.models) - len(self.embedders)
        if shared:
            lines.append(f"{len(self.embedders)} model(s) loaded; {shared} name(s) share one with the same settings")
        return lines

    def describe(self) -> list[dict[str, Any]]:
        """Each model id with what it is, for ``GET /v1/models`` and the web page."""
        kinds = {**{n: "index" for n in self.indexes}, **{n: "classifier" for n in self.classifiers}}
        out = []
        for name, embedder in self.models.items():
            info: dict[str, Any] = {
                "kind": kinds.get(name, "model"),
                "dim": embedder.dim,
                "settings": embedder.config.vector_settings(),
            }
            if name in self.indexes:
                ix = self.indexes[name].index
                info.update(rows=ix.size, metric=ix.metric, stored_columns=ix.stored_columns)
            if name in self.classifiers:
                info["classes"] = self.classifiers[name].model.classes
            out.append({"id": name, "object": "model", "created": 0, "owned_by": "embedkit", "embedkit": info})
        return out


def _key(config: ExtractConfig) -> str:
    return json.dumps(
        {**config.vector_settings(), "trust_remote_code": config.trust_remote_code}, sort_keys=True, default=str
    )


class _Loader:
    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.by_key: dict[str, Embedder] = {}

    def embedder(self, config: ExtractConfig, label: str) -> Embedder:
        config = config.replace(trust_remote_code=self.settings.trust_remote_code)
        key = _key(config)
        if key not in self.by_key:
            extractor = self.settings.runtime.extractor(config)
            if len(extractor.columns) != 1:
                raise ConfigError(f"{label}: a served model needs one layer and one pooling, got {extractor.columns}")
            # One forward pass now: safetensors weights are memory-mapped and only paged in when first used, so
            # without it the first request pays for reading the model and RSS at start understates the server.
            extractor.encode(["warm up"])
            resolved = _key(extractor.config)
            if resolved in self.by_key:  # flags that resolve to an artefact's settings: keep the first copy
                self.by_key[key] = self.by_key[resolved]
            else:
                model_id = f"m{len(self.by_key)}"
                batcher = MicroBatcher(
                    extractor,
                    self.settings.batching,
                    self.settings.limits.max_queue,
                    on_batch=self.metrics.batch_observer(model_id),
                    name=f"embedkit-{model_id}",
                )
                self.metrics.track_queue(model_id, lambda b=batcher: b.depth)
                self.by_key[key] = self.by_key[resolved] = Embedder(resolved, extractor, batcher)
                log.info("loaded %s for %s (%s)", config.model, label, model_id)
        return self.by_key[key]


def load_services(settings: ServeSettings, metrics: Metrics) -> Services:
    """Load every artefact and model named in ``settings`` (before the server binds, so errors are clean).

    Raises:
        InputError: an artefact directory is missing or damaged.
        ModelLoadError: a model cannot be loaded.
        IncompatibleError: an artefact's settings no longer resolve to what it was made with.
    """
    from ..classify import load_model
    from ..index import Index

    loader = _Loader(settings, metrics)
    models: dict[str, Embedder] = {}
    indexes: dict[str, ServedIndex] = {}
    classifiers: dict[str, ServedClassifier] = {}
    for artefact in settings.indexes:
        index = Index.load(artefact.path, device=settings.device)
        embedder = loader.embedder(index.config, f"index {artefact.name}")
        index.use_extractor(embedder.extractor)  # refuses an extractor that would not embed like the index
        models[artefact.name] = embedder
        indexes[artefact.name] = ServedIndex(artefact.name, embedder, index=index)
    for artefact in settings.classifiers:
        model = load_model(artefact.path)
        embedder = loader.embedder(model.config, f"classifier {artefact.name}")
        if embedder.config.vector_settings() != model.config.vector_settings():
            raise IncompatibleError(
                f"classifier {artefact.name}: its model now resolves to other settings than at "
                f"training time ({model.config.vector_settings()} vs "
                f"{embedder.config.vector_settings()})"
            )
        if embedder.dim != model.dim:
            raise IncompatibleError(
                f"classifier {artefact.name} expects {model.dim}-d vectors; its model makes {embedder.dim}-d"
            )
        models[artefact.name] = embedder
        classifiers[artefact.name] = ServedClassifier(artefact.name, embedder, model=model)
    if settings.model is not None or not models:
        name = settings.model or default_model()
        config = ExtractConfig(
            model=name,
            layers=(settings.layer,),
            pooling=(settings.pooling,),
            normalize=settings.normalize,
            max_length=settings.max_length,
            long_text=settings.long_text,
        )
        models[name] = loader.embedder(config, f"model {name}")
    return Services(models, indexes, classifiers)
