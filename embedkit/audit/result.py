"""What an audit leaves: the files of its directory, the columns of its table, and :class:`AuditResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .testsets import AssociationTest
from .weat import p_in_direction

KIND = "embedkit-audit"
MANIFEST = "audit.json"
FILE_TABLE = "audit.parquet"
FILE_CSV = "audit.csv"
FILE_PLOT = "audit.png"
FILE_HTML = "audit.html"
FILE_GROUPS = "groups.csv"
FILE_PAIRS = "group_pairs.csv"
FILE_GROUPS_PLOT = "groups.png"
COLUMNS = (
    "test",
    "category",
    "layer",
    "pooling",
    "effect_size",
    "p_value",
    "ci_low",
    "ci_high",
    "n_x",
    "n_y",
    "n_a",
    "n_b",
    "permutations",
    "exact",
    "p_reverse",
    "tokens_x",
    "tokens_y",
)


def _p_dir(row: dict[str, Any]) -> float:
    return p_in_direction(row["effect_size"], row["p_value"], row["p_reverse"])


@dataclass
class AuditResult:
    """A finished audit: its rows, the manifest it sealed, and where it went."""

    output_dir: Path
    rows: list[dict[str, Any]]
    manifest: dict[str, Any]
    tests: list[AssociationTest] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """What ``embedkit audit`` prints: per test, how many pairs are significant and the strongest one."""
        m = self.manifest
        if m["mode"] == "groups":
            lines = [
                f"{m['features']}: groups of {m['group_column']!r}: "
                + ", ".join(f"{g} ({n})" for g, n in zip(m["groups"], m["sizes"]))
            ]
            lines.append(f"  {'column':<28} {'probe acc':>9} {'majority':>8} {'p':>9}")
            for r in self.rows:
                lines.append(
                    f"  {r['column']:<28} {r['probe_accuracy']:>9.4f} {r['majority_share']:>8.4f} {r['p_value']:>9.4g}"
                )
            lines.append(f"report -> {self.output_dir} ({', '.join(sorted(m['files']))})")
            return lines
        lines = [
            f"{m['model']}: {len(self.tests)} tests x {len(m['layers'])} layers x {len(m['pooling'])} pooling(s), "
            f"{m['sentences']} sentences in one pass ({m['seconds']['embed']:.1f} s), statistics "
            f"{m['seconds']['statistics']:.1f} s"
        ]
        width = max(len(t.name) for t in self.tests)
        lines.append(f"  {'test':<{width}}  significant  strongest: layer  pooling        d         p")
        for test in self.tests:
            rows = [r for r in self.rows if r["test"] == test.name]
            best = max(rows, key=lambda r: abs(r["effect_size"]))
            hits = sum(r["p_value"] < 0.05 for r in rows)
            lines.append(
                f"  {test.name:<{width}}  {hits:>5} / {len(rows):<4}  {best['layer']:>15}  "
                f"{best['pooling']:<9}{best['effect_size']:>+7.3f}  {_p_dir(best):>8.4g}"
            )
        lines.append("  (significant: WEAT's one-sided p < 0.05 as the test is written; p: in the direction of d)")
        lines.append(f"report -> {self.output_dir} ({FILE_HTML}, {FILE_PLOT}, {FILE_TABLE}, {FILE_CSV}, {MANIFEST})")
        return lines


def _write_table(rows: list[dict[str, Any]], parquet: Path | None, csv: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    if parquet is not None:
        pq.write_table(table, parquet)
    pacsv.write_csv(table, csv)


__all__ = ["COLUMNS", "KIND", "MANIFEST", "AuditResult"]
