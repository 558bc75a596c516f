"""The artefact protocol: plain names only, verified files, one writer at a time, old-or-new after a kill."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from embedkit import artefact
from embedkit.errors import BusyError, InputError, OutputError

MANIFEST = "thing.json"


def _write(target: Path, payload: str, **kwargs) -> dict:
    with artefact.writing_dir(target, kind="test-thing", manifest_name=MANIFEST, **kwargs) as stage:
        stage.path("data.txt").write_text(payload)
        return stage.seal({"payload_chars": len(payload)})


def _read(target: Path) -> str:
    opened = artefact.open_dir(target, manifest_name=MANIFEST, what="test thing")
    return opened.path("data.txt").read_text()


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/b", "..", ".", ".hidden", "", "a\\b", "x\n", 3, None, "a" * 300, "C:evil"]
)
def test_plain_name_refuses_anything_that_is_not_a_plain_file_name(name):
    with pytest.raises(InputError, match="plain names"):
        artefact.plain_name(name)


@pytest.mark.parametrize("name", ["index-0.faiss", "ids.parquet", "embedkit_model.json", "map_2.png"])
def test_plain_name_accepts_the_names_embedkit_writes(name):
    assert artefact.plain_name(name) == name


def test_written_dir_reads_back_and_lists_every_file(tmp_path):
    target = tmp_path / "thing"
    manifest = _write(target, "hello")
    assert manifest["kind"] == "test-thing" and set(manifest["files"]) == {"data.txt"}
    assert _read(target) == "hello"
    assert {p.name for p in tmp_path.iterdir()} <= {"thing", ".thing.lock"}


def test_existing_artefact_needs_overwrite_and_overwrite_replaces_it(tmp_path):
    target = tmp_path / "thing"
    _write(target, "one")
    with pytest.raises(OutputError, match="--overwrite"):
        _write(target, "two")
    _write(target, "two", overwrite=True)
    assert _read(target) == "two"


def test_a_users_own_directory_is_never_replaced(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(OutputError, match="refusing"):
        _write(target, "x", overwrite=True)
    assert (target / "notes.txt").read_text() == "precious"


def test_failure_while_writing_keeps_the_old_artefact_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "thing"
    _write(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with artefact.writing_dir(target, kind="test-thing", manifest_name=MANIFEST, overwrite=True) as stage:
            stage.path("data.txt").write_text("new, half written")
            raise RuntimeError("boom")
    assert _read(target) == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["thing"]


@pytest.mark.parametrize(
    "mutation",
    [
        "traversal",
        "absolute",
        "symlink_out",
        "tampered",
        "truncated",
        "missing",
        "unlisted",
        "not_json",
        "not_object",
        "huge_manifest",
        "bad_entry",
    ],
)
def test_hostile_or_damaged_artefacts_are_refused_before_any_file_is_read(tmp_path, mutation):
    target = tmp_path / "thing"
    _write(target, "payload")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    path = target / MANIFEST
    manifest = json.loads(path.read_text())
    entry = manifest["files"]["data.txt"]
    if mutation == "traversal":
        manifest["files"] = {"../outside.txt": entry}
    elif mutation == "absolute":
        manifest["files"] = {str(outside): entry}
    elif mutation == "symlink_out":
        (target / "data.txt").unlink()
        (target / "data.txt").symlink_to(outside)
        manifest["files"]["data.txt"] = artefact.file_entry(outside)  # even with matching digests
    elif mutation == "tampered":
        (target / "data.txt").write_text("PAYLOAD")
    elif mutation == "truncated":
        (target / "data.txt").write_text("pay")
    elif mutation == "missing":
        (target / "data.txt").unlink()
    elif mutation == "not_json":
        path.write_text("{not json")
    elif mutation == "not_object":
        path.write_text("[1, 2]")
    elif mutation == "huge_manifest":
        path.write_bytes(b" " * (artefact.MAX_MANIFEST_BYTES + 1))
    elif mutation == "bad_entry":
        manifest["files"]["data.txt"] = {"sha256": entry["sha256"], "bytes": -1}
    if mutation in ("traversal", "absolute", "symlink_out", "bad_entry"):
        path.write_text(json.dumps(manifest))
    if mutation == "unlisted":
        opened = artefact.open_dir(target, manifest_name=MANIFEST, what="test thing")
        with pytest.raises(InputError, match="not listed"):
            opened.path("other.txt")
        return
    with pytest.raises(InputError):
        _read(target)
    assert outside.read_text() == "secret"


def _hold_lock(target: str, ready, release) -> None:
    with artefact.output_lock(Path(target)):
        ready.set()
        release.wait(30)


def test_a_second_writer_fails_at_once_and_waits_with_wait(tmp_path):
    target = tmp_path / "thing"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(target), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        started = time.monotonic()
        with pytest.raises(BusyError, match="--wait"):
            _write(target, "second")
        assert time.monotonic() - started < 5
        assert not target.exists()
        release.set()
        _write(target, "waited", wait=True)  # blocks until the holder is gone, then succeeds
        assert _read(target) == "waited"
    finally:
        release.set()
        holder.join(30)


def test_busy_error_has_its_own_exit_code():
    assert BusyError.exit_code == 7 and issubclass(BusyError, OutputError)


def _write_slowly_forever(target: str, n: int) -> None:
    for i in range(n):
        _write(Path(target), f"generation {i} " * 2000, overwrite=True)


def test_kill_at_random_instants_leaves_the_old_or_the_new_artefact_complete(tmp_path):
    target = tmp_path / "thing"
    _write(target, "generation start")
    old = "generation start"
    ctx = multiprocessing.get_context("fork")
    for trial in range(8):
        proc = ctx.Process(target=_write_slowly_forever, args=(str(target), 1000))
        proc.start()
        time.sleep(0.05 + 0.03 * trial)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        text = _read(target)  # never raises: complete old or complete new
        # On a loaded machine the child can die before its first write lands: then the old artefact is the answer.
        assert text.startswith("generation") or text == old
        old = f"after kill {trial}"
        _write(target, old, overwrite=True)  # the next writer cleans what the killed one left
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".thing.") and not p.name.endswith(".lock")]


def test_single_file_writes_are_exclusive_and_atomic(tmp_path):
    target = tmp_path / "out.csv"
    with artefact.writing_file(target) as tmp:
        tmp.write_text("a\n")
    with pytest.raises(OutputError, match="--overwrite"):
        with artefact.writing_file(target) as tmp:
            tmp.write_text("b\n")
    with pytest.raises(RuntimeError):
        with artefact.writing_file(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "a\n"


def test_fallback_switch_without_exchange_is_recovered_after_a_kill_between_renames(tmp_path, monkeypatch):
    target = tmp_path / "thing"
    _write(target, "old")
    # Simulate the stranded state of the two-rename fallback: the old artefact moved aside, the new not yet in.
    stranded = tmp_path / ".thing.old-abc123"
    os.rename(target, stranded)
    assert _read(target) == "old"  # a reader puts it back
    monkeypatch.setattr(artefact.switch, "_exchange", lambda a, b: False)
    _write(target, "new", overwrite=True)
    assert _read(target) == "new"


def test_outputs_named_with_dot_components_lock_and_stage_beside_themselves(tmp_path):
    (tmp_path / "idx").mkdir()
    assert artefact.lock_path(tmp_path / "idx" / ".") == tmp_path / ".idx.lock"
    assert artefact.lock_path(tmp_path / "idx" / "sub" / "..") == tmp_path / ".idx.lock"
    _write(tmp_path / "idx" / ".", "dotted")
    assert _read(tmp_path / "idx") == "dotted"


def test_a_reader_leaves_a_stranded_old_artefact_alone_while_a_writer_holds_the_lock(tmp_path):
    target = tmp_path / "thing"
    _write(target, "old")
    stranded = tmp_path / ".thing.old-xyz"
    os.rename(target, stranded)
    with artefact.output_lock(target):  # a writer between its two renames
        with pytest.raises(InputError):
            _read(target)
        assert stranded.exists()
    assert _read(target) == "old"
