"""Progress bars for people: one bar per long step, none for a short one, numbers as people write them.

tqdm's defaults print rates like ``10.28k/s`` (read as thousands of what?) or ``1.14s/text``; these bars say
``12,345/20,000 texts`` and ``1,234 texts/s``. A step that is over within ``DELAY_S`` never draws its bar, so
fast steps leave no trace on the terminal.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

DELAY_S = 1.0


class _Bar(tqdm):
    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        n, total, elapsed, unit = d["n"], d["total"], d["elapsed"], d["unit"]
        rate = d.get("rate") or (n / elapsed if elapsed else 0.0)  # tqdm's smoothed rate, once it has one
        d["count"] = f"{n:,}/{total:,}" if total else f"{n:,}"
        d["speed"] = f"{rate:,.0f} {unit}s/s" if rate >= 10 else f"{rate:,.1f} {unit}s/s"
        return d


def progress_bar(desc: str, total: int | None = None, *, unit: str = "row", enabled: bool = True) -> tqdm:
    """A bar on stderr for one step of ``total`` units (None: unknown, a counter without a bar)."""
    if total:
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {count} {unit}s [{elapsed}<{remaining}, {speed}{postfix}]"
    else:
        fmt = "{desc}: {count} {unit}s [{elapsed}, {speed}{postfix}]"
    return _Bar(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        delay=DELAY_S,
        bar_format=fmt,
    )


def per_second(amount: float, seconds: float) -> str:
    """``12,345`` (per second) for a postfix or a summary."""
    return f"{amount / seconds:,.0f}" if seconds > 0 else "0"


__all__ = ["DELAY_S", "per_second", "progress_bar"]
