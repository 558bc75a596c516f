"""Real short texts for benchmarks: the Debian fortune files, read at run time (never copied into the repo).

Each fortune file (``/usr/share/games/fortunes/<category>``) holds entries separated by lines holding only
``%``. Their lengths are realistic for embedding work: mostly a sentence or two, with a long tail of
multi-paragraph pieces, so length-aware batching is measured on the shape of data it meets in practice.
"""

from __future__ import annotations

import random
from pathlib import Path

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# .dat are strfile indexes; .u8 are the same texts re-encoded; off/ holds the offensive set (rot13).
_SKIP_SUFFIXES = (".dat", ".u8")


def _entries(path: Path) -> list[str]:
    # Some files are not valid UTF-8; replacing bad bytes keeps every entry instead of failing the run.
    raw = path.read_text(encoding="utf-8", errors="replace")
    entries, current = [], []
    for line in raw.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current).strip())
    return [e for e in entries if e]


def fortune_files(directory: Path | str = FORTUNE_DIR) -> list[Path]:
    """The fortune files of ``directory`` in name order, indexes and re-encoded copies left out."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: install the fortunes package (e.g. fortunes-min)")
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.endswith(_SKIP_SUFFIXES))


def load_fortunes(n: int | None = None, seed: int = 0, directory: Path | str = FORTUNE_DIR) -> list[tuple[str, str]]:
    """Load fortune entries as ``(text, category)`` pairs; category is the file name.

    Args:
        n: how many to return, drawn at random without replacement (None = all, in file order).
        seed: the draw's seed, so two benchmarks given the same ``n`` and ``seed`` see the same texts.
        directory: where the fortune files are.

    Returns:
        ``(text, category)`` pairs; with ``n`` set, in the drawn (random) order.
    """
    pairs = [(text, path.name) for path in fortune_files(directory) for text in _entries(path)]
    if n is None or n >= len(pairs):
        return pairs
    return random.Random(seed).sample(pairs, n)
