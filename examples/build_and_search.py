"""Embed a few texts, index them and search by text. Usage: python build_and_search.py [MODEL_DIR]"""

import csv
import os
import sys

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
with open("docs.csv", "w", newline="") as f:
    csv.writer(f).writerows([["text"], *[[t] for t in texts]])

embed_file("docs.csv", "docs.parquet", ExtractConfig(model=model), keep=("text",), overwrite=True)
print(*build_index("docs.parquet", "example-index", overwrite=True).summary_lines(), sep="\n")
for hit in Index.load("example-index").search("a cat playing", k=3).hits():
    print(f"{hit['rank']}  {hit['score']:.3f}  {hit['text']}")
