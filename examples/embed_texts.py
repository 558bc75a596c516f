"""Embed a list of texts in memory: one layer and pooling gives an array, several give a dict of arrays.

Run: python examples/embed_texts.py [MODEL]   (MODEL: hub id or local dir; default $EMBEDKIT_MODEL or GPT-2)
"""

import sys

import numpy as np

from embedkit import ExtractConfig, Extractor

model = sys.argv[1] if len(sys.argv) > 1 else None  # None: $EMBEDKIT_MODEL, else openai-community/gpt2
texts = ["The cat sat on the mat.", "A dog slept on the rug.", "Interest rates rose again this year."]

# Last layer, mean pooling: a (3, hidden) array.
vectors = Extractor(ExtractConfig(**({"model": model} if model else {}), normalize=True)).embed(texts)
print(
    "shape",
    vectors.shape,
    "cosine(cat, dog) =",
    round(float(vectors[0] @ vectors[1]), 3),
    "cosine(cat, rates) =",
    round(float(vectors[0] @ vectors[2]), 3),
)

# Several layers and poolings from ONE forward pass: a dict keyed by column name.
many = Extractor(ExtractConfig(**({"model": model} if model else {}), layers=(1, -1), pooling=("mean", "last"))).embed(
    texts
)
for column, array in many.items():
    print(column, array.shape, "norm of first row", round(float(np.linalg.norm(array[0])), 2))
