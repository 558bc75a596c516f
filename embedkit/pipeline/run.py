"""``run_pipeline``: embed once, then each stage the file names, skipping those whose fingerprint is unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artefact import write_text_atomic
from ..cache import cache_key
from ..config import local_model_dir
from ..errors import ConfigError, EmbedkitError
from ..sources import resolve_files
from .load import load_pipeline
from .stages import _SPECS, NEEDS, STAGES, _call_embed, input_spec, stage_outputs
from .state import STATE_FILE, _digest, _files_digest, _load_state


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    seconds: float
    summary: str
    outputs: list[Path]


def run_pipeline(
    path: str | Path,
    *,
    force: bool = False,
    model: str | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    trust_remote_code: bool = False,
) -> list[StageOutcome]:
    """Run a pipeline file; stages whose fingerprint is unchanged (and whose outputs exist) are skipped.

    ``trust_remote_code`` lets the model's own code run in every stage; the file cannot ask for it.
    """
    p = load_pipeline(path, model=model, output_dir=output_dir, trust_remote_code=trust_remote_code)
    try:
        p.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {p.output_dir}: {exc}") from exc
    state_path = p.output_dir / STATE_FILE
    state = {} if force else _load_state(state_path)
    from ..embed import model_files  # lazily, like every stage: `embedkit run --help` stays fast

    source_files = resolve_files(p.relative(p.source["path"]))
    # A checkpoint replaced at the same local path is another model: its stat data is part of the key.
    model_stat = model_files(p.config.model) if local_model_dir(p.config.model) is not None else None  # hub id: None
    input_digests = _files_digest(source_files)
    features_key = cache_key(input_digests, input_spec(p), p.config, model_stat)
    upstream = {"embed": _digest(input_digests, p.source, p.config.vector_settings(), model_stat)}
    outcomes = []
    for stage in ("embed", *[s for s in STAGES[1:] if s in p.stages]):
        options = dict(p.stages.get(stage, {}))
        parent = NEEDS.get(stage, "embed")
        outputs = stage_outputs(p, stage)
        if stage == "embed":
            fingerprint = upstream["embed"]
        else:
            extra_files = [p.relative(options["input"])] if stage == "predict" and "input" in options else []
            if stage == "search" and isinstance(options.get("queries"), str):
                extra_files = [p.relative(options["queries"])]
            fingerprint = _digest(
                upstream[parent], stage, options, _files_digest([f for f in extra_files if f.is_file()])
            )
        upstream[stage] = fingerprint
        done = state.get(stage, {})
        if done.get("fingerprint") == fingerprint and all(o.exists() for o in outputs):
            echo(f"[{stage}] unchanged, skipped ({', '.join(str(o) for o in outputs)})")
            outcomes.append(StageOutcome(stage, False, 0.0, "skipped", outputs))
            continue
        echo(f"[{stage}] running")
        started = time.perf_counter()
        try:
            summary = (
                _call_embed(p, features_key, progress, force)
                if stage == "embed"
                else _SPECS[stage][5](p, options, progress)
            )
        except EmbedkitError as exc:
            raise type(exc)(f"{p.path} [{stage}]: {exc}") from exc
        seconds = time.perf_counter() - started
        state[stage] = {"fingerprint": fingerprint, "seconds": round(seconds, 2)}
        # Later stages' records depend on this one; drop them so they rerun even if this run stops early.
        for later in STAGES[STAGES.index(stage) + 1 :]:
            if later in state and state[later].get("fingerprint") != upstream.get(later):
                state.pop(later, None)
        write_text_atomic(state_path, json.dumps(state, indent=1))
        text = "\n".join(summary)
        echo(f"[{stage}] done in {seconds:.1f}s: {text}")
        outcomes.append(StageOutcome(stage, True, seconds, text, outputs))
    return outcomes
