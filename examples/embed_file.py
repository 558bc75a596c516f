"""Embed a CSV file to Parquet (what `embedkit embed` does) and read it back with pandas.

Run: python examples/embed_file.py [MODEL]   (MODEL: hub id or local dir; default $EMBEDKIT_MODEL or GPT-2)
"""

import sys
import tempfile
from pathlib import Path

import pandas as pd

from embedkit import ExtractConfig
from embedkit.embed import embed_file
from embedkit.store import open_features

data = Path(__file__).parent / "data" / "topics.csv"
out = Path(tempfile.mkdtemp()) / "topics.parquet"
config = ExtractConfig(**({"model": sys.argv[1]} if len(sys.argv) > 1 else {}), layers=(-1,), pooling=("mean", "last"))

summary = embed_file(data, out, config, id_column="id", keep=("label",), progress=False)
print(*summary.summary_lines(), sep="\n")

frame = pd.read_parquet(out)  # one row per input row, in input order
print(frame[["id", "label", "n_tokens", "status"]].head(3))
print("settings stored in the file:", open_features(out).config)
