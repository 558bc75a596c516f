"""The dataset manifest (``_embedkit-dataset.json``): its model, reading it, and checking shards against it.

Everything a reader needs before it opens a shard: the manifest is validated (pydantic, strict) before any name in
it is used, a shard's name must be exactly the one its index gives, and a shard is read only after its size,
row count and (unless told otherwise) sha256 match the record.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import artefact
from ..errors import InputError
from ..sources import DATASET_MANIFEST

MANIFEST_NAME = DATASET_MANIFEST  # sources skips it when a dataset directory is read as text input
# In the staging directory only: a header line (format, fingerprint), then one line per shard the driver recorded,
# appended (JSON Lines): recording a shard writes one line, not the whole journal again.
JOURNAL_NAME = "_journal.jsonl"
KIND: Literal["embedkit-dataset"] = "embedkit-dataset"
FORMAT: Literal[1] = 1
MAX_SHARDS = 1_000_000  # a manifest listing more is hostile or broken; refused before anything is allocated


def shard_name(index: int) -> str:
    """The file name of shard ``index``: the only name a manifest may give it."""
    return f"part-{index:05d}.parquet"


def staging_dir(output: Path) -> Path:
    """Where the shards of ``output`` are written until the job finishes (kept after a failure, for resume)."""
    output = artefact.absolute(output)
    return output.with_name(output.name + ".partial")


# ---------------------------------------------------------------------------------------------- manifest


class ShardInfo(BaseModel):
    """One shard as the journal and the manifest record it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    index: int = Field(ge=0, lt=MAX_SHARDS)
    file: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _named_by_index(self) -> ShardInfo:
        # Names are never free text: "../x" or "/etc/passwd" can only come from tampering, and is refused here.
        if self.file != shard_name(self.index):
            raise ValueError(f"shard {self.index} must be named {shard_name(self.index)!r}, not {self.file!r}")
        return self


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["embedkit-dataset"]
    format: Literal[1]
    rows: int = Field(ge=0)
    job: str | None = None  # sha256 of the fingerprint of the job that wrote it: a --resume after the end is a no-op
    features: dict[str, Any]  # what a single features file carries in its "embedkit" Parquet metadata
    shards: list[ShardInfo] = Field(min_length=1, max_length=MAX_SHARDS)

    @model_validator(mode="after")
    def _complete(self) -> DatasetManifest:
        if [s.index for s in self.shards] != list(range(len(self.shards))):
            raise ValueError("shards must be numbered 0, 1, 2, ... without a gap")
        if sum(s.rows for s in self.shards) != self.rows:
            raise ValueError(f"rows {self.rows} is not the sum of the shards' rows")
        return self


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "manifest"
    return f"{where}: {first.get('msg')}"


def read_manifest(directory: str | Path) -> DatasetManifest:
    """The validated manifest of a dataset directory; InputError for anything missing, oversized or malformed."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise InputError(f"{directory} is not a complete embedkit dataset (no {MANIFEST_NAME})") from None
    except OSError as exc:
        raise InputError(f"{path} is not readable ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a symlink?); refusing to read it")
    if info.st_size > artefact.MAX_MANIFEST_BYTES:
        raise InputError(f"{path} is {info.st_size} bytes, far larger than any manifest; refusing to read it")
    raw = path.read_bytes()
    artefact.parse_json(raw, where=path)  # the clear message for bytes that are not JSON at all
    try:
        return DatasetManifest.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise InputError(
            f"{path}: the dataset manifest is corrupt or was edited ({_validation_message(exc)})"
        ) from None


def is_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an embedkit dataset manifest (not checked further)."""
    path = Path(path)
    try:
        return path.is_dir() and stat.S_ISREG((path / MANIFEST_NAME).lstat().st_mode)
    except OSError:
        return False


def verify_shard(directory: Path, shard: ShardInfo, *, checksum: bool = True) -> Path:
    """The path of ``shard`` once its size, sha256 (unless not ``checksum``) and row count match the record;
    InputError otherwise."""
    return _verified_footer(directory, shard, checksum)[0]


def _verified_footer(directory: Path, shard: ShardInfo, checksum: bool) -> tuple[Path, pq.FileMetaData]:
    path = directory / shard.file
    entry = {"bytes": shard.bytes, "sha256": shard.sha256}
    artefact.verify_file(path, entry, MANIFEST_NAME, what="dataset", checksum=checksum)
    try:
        footer = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from exc
    if footer.num_rows != shard.rows:
        raise InputError(f"{path} holds {footer.num_rows} rows where the manifest records {shard.rows}")
    return path, footer


def iter_shard_paths(directory: Path, manifest: DatasetManifest) -> Iterator[tuple[ShardInfo, Path]]:
    """Each shard with its path, verified just before it is yielded (so a reader never reads an unchecked file)."""
    for shard in manifest.shards:
        yield shard, verify_shard(directory, shard)


def shard_stat_check(directory: Path, manifest: DatasetManifest) -> None:
    """The cheap check made when a dataset is opened: every shard is there, a regular file of the recorded size."""
    for shard in manifest.shards:
        path = directory / shard.file
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise InputError(f"{directory}: shard {shard.file} is missing; the dataset is incomplete") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size != shard.bytes:
            raise InputError(
                f"{path} is not the file the manifest records (size {info.st_size}, recorded {shard.bytes}, or not a "
                "regular file): truncated or replaced"
            )
