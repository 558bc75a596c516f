"""Which layer and pooling of a model give the best features for a labelled task? One forward pass answers it.

Run: python examples/probe_layers.py [MODEL]   (MODEL: hub id or local dir; default $EMBEDKIT_MODEL or GPT-2)
"""

import csv
import os
import sys
import tempfile
from pathlib import Path

from embedkit import ExtractConfig
from embedkit.probe import probe_file

topics = {"money": "bank loan price market money", "pets": "cat dog bird fish tree", "fun": "music film game ball team"}
work = Path(tempfile.mkdtemp())
with open(work / "labelled.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    for topic, words in topics.items():
        writer.writerows(
            [f"we talked about the {w} and the {words.split()[i % 5]} all day", topic]
            for i, w in enumerate(words.split() * 2)
        )

model = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EMBEDKIT_MODEL", "openai-community/gpt2")
config = ExtractConfig(model=model, pooling=("mean", "last", "weighted-mean"))  # layers: all of them, 0 = embeddings
result = probe_file(work / "labelled.csv", "label", work / "report", config, cv=5, progress=False)  # = `embedkit probe`
# the table, the best pair and the `embedkit embed` command for it; plot in report/probe.png
print(*result.summary_lines(), sep="\n")
