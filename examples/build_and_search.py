"""Embed a few texts, index them and search by text.

Run: python examples/build_and_search.py [MODEL]   (MODEL: hub id or local dir; default $EMBEDKIT_MODEL or GPT-2)
Everything is written into a new temporary directory: nothing in the current one is created or replaced.
"""

import csv
import os
import sys
import tempfile
from pathlib import Path

from embedkit import ExtractConfig
from embedkit.embed import embed_file
from embedkit.index import Index, build_index

model = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EMBEDKIT_MODEL", "openai-community/gpt2")
texts = [
    "The cat sat on the mat.",
    "Dogs love long walks.",
    "Stock prices fell sharply today.",
    "The market rallied after the bank's report.",
    "A kitten chased a ball of yarn.",
]
work = Path(tempfile.mkdtemp(prefix="embedkit-example-"))
with open(work / "docs.csv", "w", newline="") as f:
    csv.writer(f).writerows([["text"], *[[t] for t in texts]])

embed_file(work / "docs.csv", work / "docs.parquet", ExtractConfig(model=model), keep=("text",), progress=False)
print(*build_index(work / "docs.parquet", work / "index").summary_lines(), sep="\n")
for hit in Index.load(work / "index").search("a cat playing", k=3).hits():
    print(f"{hit['rank']}  {hit['score']:.3f}  {hit['text']}")
print(f"files in {work}")
