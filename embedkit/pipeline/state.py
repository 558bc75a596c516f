"""What a pipeline remembers between runs: content fingerprints and the record of the stages that finished."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..artefact import parse_json
from ..errors import InputError
from ..input_files import InputFile, file_digest

STATE_FILE = "pipeline-state.json"


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _files_digest(paths: list[Path] | list[InputFile]) -> list[str]:
    return [file_digest(p)["sha256"] for p in paths]


def _load_state(path: Path) -> dict[str, Any]:
    # Only a record of which stages are up to date: anything unreadable or of the wrong shape (a kill before it
    # existed, a hand edit) means "nothing known", so every stage whose record is gone simply runs again.
    try:
        state = parse_json(path.read_bytes(), where=path)
    except (OSError, InputError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {stage: record for stage, record in state.items() if isinstance(record, dict)}
