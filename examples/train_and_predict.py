"""Embed labelled texts, train a classifier, then classify new raw text with the saved model.

Run: python examples/train_and_predict.py [MODEL]   (MODEL: hub id or local dir; default $EMBEDKIT_MODEL or GPT-2)
"""

import csv
import os
import sys
import tempfile
from pathlib import Path

from embedkit import ExtractConfig
from embedkit.classify import predict_file, train
from embedkit.embed import embed_file

topics = {"money": "bank loan price market money", "pets": "cat dog bird fish tree", "fun": "music film game ball team"}
work = Path(tempfile.mkdtemp())
with open(work / "train.csv", "w", newline="") as f:
    rows = [
        {"text": " ".join(words.split()[i:] + words.split()[:i]), "label": t}
        for t, words in topics.items()
        for i in range(5)
    ]
    writer = csv.DictWriter(f, ["text", "label"])
    writer.writeheader()
    writer.writerows(rows)

model = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EMBEDKIT_MODEL", "openai-community/gpt2")
embed_file(work / "train.csv", work / "train.parquet", ExtractConfig(model=model), keep=("label",), progress=False)
result = train(work / "train.parquet", "label", work / "model", cv=5)  # the same as `embedkit train`
print(*result.summary_lines(), sep="\n")

(work / "new.txt").write_text("a loan from the bank\nmy cat and my dog\n")
predict_file(work / "model", work / "new.txt", work / "predictions.csv", progress=False)  # settings come from the model
print((work / "predictions.csv").read_text())
