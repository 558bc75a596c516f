"""Does a model's feature space tie gender, race or religion terms to stereotyped attributes? Layer by layer, one pass.

Run: python examples/audit_bias.py [MODEL]   (MODEL: hub id or local dir; default $EMBEDKIT_MODEL or GPT-2)
"""

import os
import sys
import tempfile
from pathlib import Path

from embedkit import ExtractConfig
from embedkit.audit import audit_model

model = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EMBEDKIT_MODEL", "openai-community/gpt2")
out = Path(tempfile.mkdtemp()) / "audit"
# The built-in tests (gender, race, religion, and a flowers/insects baseline) on every layer, mean pooling; the
# random-weights twin shows what the words' surface form alone would produce.
result = audit_model(out, ExtractConfig(model=model), layers="all", control=True, progress=False)  # = `embedkit audit`
# per test: significant layers and the strongest; read out/audit.html for the plain words
print(*result.summary_lines(), sep="\n")
strongest = max(result.rows, key=lambda r: abs(r["effect_size"]))
print(
    f"largest |d|: {strongest['test']} at layer {strongest['layer']}: d = {strongest['effect_size']:+.2f} "
    f"(random weights: {strongest['control_effect_size']:+.2f})"
)
