"""The README's first hour works as pasted: every bash and Python block of Install, Quick start and Python API runs,
in order, in one empty directory, exits 0 and leaves the files it names.

The only change from a user's terminal is the model: ``EMBEDKIT_MODEL`` points at a GPT-2 of the real shape in
depth (12 blocks, so ``--layer 6`` means what it says) but 32 wide, made by embedkit's own checkpoint maker with the
real GPT-2 tokenizer. A block the tests cannot run (it needs the network, or sets the model the test sets) carries
``<!-- not run in tests: REASON -->`` on the line before it, visible to every reader of the source.

``embedkit`` on the blocks' PATH is the real CLI of this checkout. By default it runs in a process forked from one
that has already imported torch, transformers and the rest, so the quick start's twenty commands do not pay that
import twenty times (~7 CPU-seconds each on this machine); ``EMBEDKIT_README_PLAIN=1`` runs each command as a fresh
``python -m embedkit`` instead, exactly as a user would (slower, same result).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TESTED_SECTIONS = ("Install", "Quick start", "Python API")
SKIP_MARKER = re.compile(r"<!--\s*not run in tests:\s*(.+?)\s*-->")
# Relative paths a block names: files with a data extension, and directories written with a trailing slash.
NAMED_FILE = re.compile(r"(?<![\w/.$-])([\w-][\w.-]*\.(?:csv|parquet|toml|png|json))\b")
NAMED_DIR = re.compile(r"(?<![\w/.$:-])([\w-][\w.-]*(?:/[\w.-]+)*/)(?=[\s\"'`),]|$)")


@dataclass
class Block:
    section: str
    language: str
    code: str
    line: int
    skip: str | None  # the marker's reason, or None: the block runs

    def named_paths(self) -> list[str]:
        found = NAMED_FILE.findall(self.code) + NAMED_DIR.findall(self.code)
        return list(dict.fromkeys(found))

    def where(self) -> str:
        return f"README.md line {self.line} ({self.section}, {self.language})"


def readme_blocks(text: str) -> list[Block]:
    """The bash and python blocks of the tested sections, in order, each with the skip marker before it if any."""
    blocks: list[Block] = []
    section = ""
    previous = ""  # the last non-blank line before a fence
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = re.fullmatch(r"```(\w*)\s*", line)
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            language = fence.group(1)
            if section in TESTED_SECTIONS and language in ("bash", "python"):
                marker = SKIP_MARKER.search(previous)
                code = "\n".join(lines[i + 1 : end]) + "\n"
                blocks.append(Block(section, language, code, i + 1, marker.group(1) if marker else None))
            i = end + 1
            previous = ""
            continue
        if line.strip():
            previous = line
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_blocks_are_found_and_few_are_skipped():
    assert {b.section for b in BLOCKS} == set(TESTED_SECTIONS)
    ran = [b for b in BLOCKS if not b.skip]
    skipped = [b for b in BLOCKS if b.skip]
    assert len(ran) >= 8, [b.where() for b in ran]
    # Skips are for what cannot run offline: installing, downloading, choosing the model the test chooses.
    assert len(skipped) <= 3, [f"{b.where()}: {b.skip}" for b in skipped]
    assert ran[0].code.startswith("embedkit samples ."), "the quick start must begin by writing its sample files"
    # A model named in a block would override $EMBEDKIT_MODEL, which the error messages tell users to set.
    for block in ran:
        code = "\n".join(line.split("#", 1)[0] for line in block.code.splitlines())
        assert "model=" not in code and "--model" not in code, f"{block.where()} names a model"


# ---------------------------------------------------------------------------------------------- the fork server

_SERVER = r"""
import json, os, runpy, socket, sys, traceback

import faiss, pyarrow.parquet, sklearn.linear_model, torch, transformers  # what every command would import again
import embedkit.cli
from embedkit.extract import Extractor

server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(sys.argv[1])
server.listen(8)
server.settimeout(2)
parent = os.getppid()
print("ready", flush=True)
while os.getppid() == parent:  # a killed pytest must not leave the server behind
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    conn.settimeout(None)
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(message)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for number, fd in enumerate(fds):
                os.dup2(fd, number)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            if request["kind"] == "embedkit":
                sys.argv = request["argv"]
                embedkit.cli.cli.main(args=sys.argv[1:], prog_name="embedkit")
            else:  # `run-python SCRIPT ARGS...`: the script runs as `python SCRIPT ARGS...` would run it
                sys.argv = request["argv"][1:]
                runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    conn.send(str(os.waitstatus_to_exitcode(status)).encode())
    conn.close()
"""

_CLIENT = """#!{python} -S
import json, os, socket, sys

connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
connection.connect({socket_path!r})
request = {{"kind": {kind!r}, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
answer = connection.recv(64)
sys.exit(int(answer) if answer else 1)
"""


@pytest.fixture(scope="module")
def block_env(tmp_path_factory):
    """Environment for the blocks: the tiny 12-block GPT-2 as EMBEDKIT_MODEL, and `embedkit` on PATH."""
    from embedkit.testing.checkpoint import write_checkpoint

    base = tmp_path_factory.mktemp("readme")
    model = write_checkpoint(base / "gpt2-12x32", layers=12, width=32, heads=2)
    bin_dir = base / "bin"
    bin_dir.mkdir()
    env = {
        **os.environ,
        "EMBEDKIT_MODEL": str(model),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }
    server = None
    embedkit = bin_dir / "embedkit"
    if os.environ.get("EMBEDKIT_README_PLAIN"):
        embedkit.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m embedkit "$@"\n')
        runner = None
    else:
        socket_path = str(base / "server.sock")
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, socket_path], env=env, stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        embedkit.write_text(_CLIENT.format(python=sys.executable, socket_path=socket_path, kind="embedkit"))
        runner = bin_dir / "run-python"
        runner.write_text(_CLIENT.format(python=sys.executable, socket_path=socket_path, kind="python"))
        runner.chmod(0o755)
    embedkit.chmod(0o755)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    yield env, runner
    if server is not None:
        server.terminate()
        server.wait(timeout=30)


def _run(block: Block, index: int, work: Path, scripts: Path, env: dict, runner: Path | None):
    suffix = ".sh" if block.language == "bash" else ".py"
    script = scripts / f"block-{index:02d}{suffix}"
    script.write_text(block.code, encoding="utf-8")
    if block.language == "bash":
        command = ["bash", "-e", "-o", "pipefail", str(script)]
    else:
        command = [str(runner) if runner else sys.executable, str(script)]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)


def test_every_block_runs_in_order_in_an_empty_directory(block_env, tmp_path):
    env, runner = block_env
    work = tmp_path / "empty"
    work.mkdir()
    scripts = tmp_path / "blocks"  # outside the working directory: it stays as a user's would
    scripts.mkdir()
    timings = []
    for index, block in enumerate(BLOCKS):
        if block.skip:
            continue
        started = time.perf_counter()
        result = _run(block, index, work, scripts, env, runner)
        timings.append(f"{block.where()}: {time.perf_counter() - started:.1f}s")
        assert result.returncode == 0, (
            f"{block.where()} exited {result.returncode}:\n{block.code}\n--- stdout\n{result.stdout[-3000:]}"
            f"\n--- stderr\n{result.stderr[-5000:]}"
        )
        missing = [name for name in block.named_paths() if not (work / name).exists()]
        assert not missing, f"{block.where()} ran but these paths it names do not exist: {missing}"
    print("\n".join(timings))


def test_the_named_paths_are_what_the_blocks_write():
    """The path check above is only as good as the extraction: it must see the outputs of each kind of block."""
    names = {name for block in BLOCKS if not block.skip for name in block.named_paths()}
    for expected in ("reviews.parquet", "ticket-model/", "predictions.csv", "docs-index/", "hits.parquet"):
        assert expected in names
    for expected in ("clusters/", "probe-report/", "embedkit-out/tickets/", "api-model/", "api-index/"):
        assert expected in names


def test_samples_are_what_the_quick_start_reads():
    from embedkit.samples import SAMPLES

    code = "".join(b.code for b in BLOCKS if b.section == "Quick start" and not b.skip)
    quick_start = "\n".join(line.split("#", 1)[0] for line in code.splitlines())  # commands, not their comments
    for name in SAMPLES:
        assert name in quick_start, f"sample {name} is shipped but the quick start never uses it"
