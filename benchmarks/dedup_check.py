"""Does ``embedkit dedup`` find the groups an all-pairs comparison finds? On 20k rows, timed against brute force.

Synthetic clustered vectors (the hard case for a threshold: many pairs just above and below it) with planted near
copies, exact vector copies and exact text copies; or, with ``--features``, the vectors of a real features file.
Brute force: numpy cosine of every pair (in blocks), pairs >= threshold (same 1e-6 tolerance) and equal
normalised texts, joined by a plain union-find written here, independent of the scipy graph code dedup uses.

    PYTHONPATH=. python benchmarks/dedup_check.py --rows 20000 --dim 384 --threshold 0.95
    PYTHONPATH=. python benchmarks/dedup_check.py --features fortunes-minilm.parquet --texts fortunes.jsonl \
        --threshold 0.9
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.config import ExtractConfig
from embedkit.dedup import TOLERANCE, dedup_file, normalise_text
from embedkit.store import matrix_from_arrow, open_features, with_metadata


def synthetic(rows: int, dim: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(rows // 50, dim))
    matrix = centres[rng.integers(0, len(centres), rows)] + rng.normal(scale=0.9, size=(rows, dim))
    n_near, n_copy, n_text = rows // 20, rows // 100, rows // 100
    # Near copies whose cosine to their source spreads over [~0.89, 1]: many pairs fall just either side of
    # a 0.95 threshold, and a copy of a copy makes chains.
    near = rng.choice(rows, size=(n_near, 2), replace=False)
    ratio = rng.uniform(0, 0.5, size=(n_near, 1)) * np.linalg.norm(matrix[near[:, 0]], axis=1, keepdims=True)
    matrix[near[:, 1]] = matrix[near[:, 0]] + rng.normal(size=(n_near, dim)) * ratio / np.sqrt(dim)
    copies = rng.choice(rows, size=(n_copy, 2), replace=False)
    matrix[copies[:, 1]] = matrix[copies[:, 0]]
    texts = [f"document {i}" for i in range(rows)]
    for a, b in rng.choice(rows, size=(n_text, 2), replace=False):
        texts[b] = f"  {texts[a]} "  # same text after whitespace normalisation, unrelated vectors
    return matrix.astype(np.float32), texts


def write_features(path: Path, matrix: np.ndarray, texts: list[str]) -> None:
    n, dim = matrix.shape
    table = pa.table(
        {
            "id": pa.array(np.arange(n)),
            "text": pa.array(texts),
            "status": pa.array(["ok"] * n),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim),
        }
    )
    meta = {"format_version": 1, "config": ExtractConfig(model="synthetic").to_dict(), "model": {}, "columns": []}
    pq.write_table(table.replace_schema_metadata(with_metadata(table.schema, meta).metadata), path)


def brute_force(matrix: np.ndarray, texts: list[str | None] | None, threshold: float) -> set[frozenset[int]]:
    n = len(matrix)
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms > 0, norms, 1)
    for start in range(0, n, 2048):
        sims = unit[start : start + 2048] @ unit.T
        for i, j in zip(*np.nonzero(sims >= threshold - TOLERANCE)):
            parent[find(int(i) + start)] = find(int(j))
    if texts is not None:
        seen: dict[str, int] = {}
        for i, text in enumerate(texts):
            key = normalise_text(text) if text else ""
            if key:
                parent[find(i)] = find(seen.setdefault(key, i))
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search", default="exact", help="exact or hnsw (approximate)")
    parser.add_argument("--features", type=Path, default=None, help="Check on the vectors of this features file.")
    parser.add_argument("--texts", type=Path, default=None, help="JSONL whose 'text' of line i is the text of row i.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.features:
            path = args.features
            feats = open_features(path)
            table = pq.read_table(path)
            if args.texts:  # texts of a features file embedded without --keep text, line i = row i
                lines = args.texts.read_text(encoding="utf-8").splitlines()
                table = table.drop_columns([c for c in ("text",) if c in table.column_names])
                table = table.append_column("text", pa.array([json.loads(line)["text"] for line in lines]))
                path = Path(tmp) / "with-text.parquet"
                pq.write_table(table, path)
            column = table.column(feats.embedding_column())
            # Null rows decode to zeros: no cosine pairs, compared by text only, as dedup does.
            matrix = matrix_from_arrow(column, feats.vector_encoding(feats.embedding_column())).copy()
            matrix[~column.is_valid().to_numpy(zero_copy_only=False)] = 0
            texts = table.column("text").to_pylist() if "text" in table.column_names else None
            source = f"{path} ({len(matrix)} rows, dim {matrix.shape[1]})"
        else:
            matrix, texts = synthetic(args.rows, args.dim, args.seed)
            path = Path(tmp) / "features.parquet"
            write_features(path, matrix, texts)
            source = f"synthetic clustered vectors, {args.rows} rows, dim {args.dim}"
        t0 = time.perf_counter()
        result = dedup_file(path, Path(tmp) / "dedup.parquet", threshold=args.threshold, search=args.search)
        dedup_s = time.perf_counter() - t0
        found: dict[int, set[int]] = {}
        for i, g in enumerate(
            pq.read_table(Path(tmp) / "dedup.parquet", columns=["dup_group"])["dup_group"].to_pylist()
        ):
            if g is not None:
                found.setdefault(g, set()).add(i)
        t0 = time.perf_counter()
        expected = brute_force(matrix, texts, args.threshold)
        brute_s = time.perf_counter() - t0
    groups = {frozenset(g) for g in found.values()}
    print(f"input: {source}; threshold {args.threshold}")
    for line in result.summary_lines():
        print(line)
    print(f"embedkit dedup: {dedup_s:.1f}s (whole command: read, search, write); brute force: {brute_s:.1f}s")
    print(
        f"groups identical to brute force: {groups == expected} "
        f"({len(groups)} vs {len(expected)} groups; {len(groups - expected)} only in dedup, "
        f"{len(expected - groups)} only in brute force)"
    )


if __name__ == "__main__":
    main()
