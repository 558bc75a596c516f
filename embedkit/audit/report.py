"""The audit's HTML report: one self-contained file (figures inline as base64, no script, nothing fetched).

Every number gets a sentence in plain words next to it, and the method's limits are stated on the page: a reader
who only opens the report must not come away with more certainty than the test gives.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

from .testsets import AssociationTest
from .weat import p_in_direction

ALPHA = 0.05
CSS = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
td.text, th.text { text-align: left; }
tr.significant td { background: #fff4e5; }
tr.reverse td { background: #eaf2fb; }
img { max-width: 100%; }
.words { color: #555; font-size: 0.9em; }
.warning { background: #fff0f0; padding: 0.3em 0.8em; border-left: 4px solid #c0392b; }
.limits { background: #f4f6fa; padding: 0.6em 1.2em; border-left: 4px solid #6b7fa8; }
"""


def magnitude(d: float) -> str:
    """Cohen's rough marks for |d|: a reading aid, not a threshold of harm."""
    size = abs(d)
    return "negligible" if size < 0.2 else "small" if size < 0.5 else "medium" if size < 0.8 else "large"


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"


def explain(row: dict[str, Any], test: AssociationTest) -> str:
    """One result in plain words (escaped HTML)."""
    d = row["effect_size"]
    p = p_in_direction(d, row["p_value"], row["p_reverse"])
    e = html.escape
    if d >= 0:
        lean = f"{e(test.x_name)} sit closer to {e(test.a_name)} and {e(test.y_name)} closer to {e(test.b_name)}"
    else:
        lean = f"{e(test.x_name)} sit closer to {e(test.b_name)} and {e(test.y_name)} closer to {e(test.a_name)}"
    if not row["exact"] and p * (row["permutations"] + 1) < 1.5:
        # (1 + 0) / (1 + n): no random split reached it; p is then only a bound set by the number of splits.
        chance = (
            f"none of {row['permutations']:,} random splits of the same target words into two groups reaches an "
            "association this strong"
        )
    else:
        chance = (
            f"splitting the same target words into two groups at random gives an association at least this "
            f"strong in this direction {p * 100:.2g}% of the time"
        )
    interval = ""
    if not math.isnan(row["ci_low"]):
        crosses = row["ci_low"] <= 0 <= row["ci_high"]
        interval = f" The 95% bootstrap interval, {_num(row['ci_low'])} to {_num(row['ci_high'])}, " + (
            "includes 0: with other words of the same kinds the direction could differ."
            if crosses
            else "stays on one side of 0."
        )
    if "control_effect_size" in row:
        twin_p = p_in_direction(row["control_effect_size"], row["control_p_value"], row["control_p_reverse"])
        interval += (
            f" The same architecture with random weights gives d = {row['control_effect_size']:.2f} "
            f"(p = {_p(twin_p)}): what surface form alone produces."
        )
    if row["p_value"] < ALPHA:
        return f"{lean}: a {magnitude(d)} effect (d = {d:.2f}); {chance} (p = {_p(p)}).{interval}"
    if row["p_reverse"] < ALPHA:
        return (
            f"Opposite to the direction the test is written in: {lean}, a {magnitude(d)} effect (d = {d:.2f}); "
            f"{chance} (reverse p = {_p(p)}). It was not the hypothesis tested, so read it as a lead, not a "
            f"finding.{interval}"
        )
    return (
        f"No reliable association: {lean} by d = {d:.2f} ({magnitude(d)}), but {chance} (p = {_p(p)}), so "
        f"chance explains it as well.{interval}"
    )


def _words(test: AssociationTest) -> str:
    e = html.escape
    parts = []
    for label, name, words in (
        ("X", test.x_name, test.x),
        ("Y", test.y_name, test.y),
        ("A", test.a_name, test.a),
        ("B", test.b_name, test.b),
    ):
        parts.append(f"<b>{label}</b> = {e(name)} ({len(words)}): {e(', '.join(words))}")
    templates = ", ".join(f"&ldquo;{e(t)}&rdquo;" for t in test.templates)
    parts.append(f"<b>templates</b> ({len(test.templates)}): {templates}")
    return "<p class='words'>" + "<br>".join(parts) + "</p>"


def _surface(test: AssociationTest, row: dict[str, Any], gap: float) -> str:
    """Flag target sets that differ in length as well as meaning: a confound the test cannot separate."""
    tx, ty = row["tokens_x"], row["tokens_y"]
    text = f"Tokens per sentence: {html.escape(test.x_name)} {tx:.1f}, {html.escape(test.y_name)} {ty:.1f}."
    if abs(tx - ty) < gap:
        return f"<p class='words'>{text}</p>"
    return (
        f"<p class='warning'>{text} The target sets differ in how the tokenizer splits them, so part of any "
        "association can come from surface form (length, rare subwords) rather than meaning. The random-weights "
        "control (<code>embedkit audit --random-control</code>) shows how much.</p>"
    )


def _test_section(test: AssociationTest, rows: list[dict[str, Any]], gap: float) -> str:
    e = html.escape
    strongest = max(rows, key=lambda r: abs(r["effect_size"]))
    significant = sum(r["p_value"] < ALPHA for r in rows)
    lines = [
        f"<h3>{e(test.name)} <small>({e(test.category)})</small></h3>",
        _words(test),
        _surface(test, rows[0], gap),
        f"<p>Significant (p &lt; {ALPHA}) at {significant} of {len(rows)} layer/pooling pairs. Strongest at layer "
        f"{strongest['layer']} ({e(strongest['pooling'])}): {explain(strongest, test)}</p>",
        "<table><tr><th>layer</th><th class='text'>pooling</th><th>d</th><th>95% interval</th>"
        "<th>p (X~A)</th><th>p (X~B)</th>"
        + ("<th>d, random weights</th>" if "control_effect_size" in rows[0] else "")
        + "<th class='text'>in plain words</th></tr>",
    ]
    for r in rows:
        mark = " class='significant'" if r["p_value"] < ALPHA else " class='reverse'" if r["p_reverse"] < ALPHA else ""
        exact = "exact" if r["exact"] else f"{r['permutations']:,} random splits"
        lines.append(
            f"<tr{mark}><td>{r['layer']}</td><td class='text'>{e(r['pooling'])}</td>"
            f"<td>{r['effect_size']:.3f}</td><td>{_num(r['ci_low'])} to {_num(r['ci_high'])}</td>"
            f"<td title='{exact}'>{_p(r['p_value'])}</td><td title='{exact}'>{_p(r['p_reverse'])}</td>"
            + (f"<td>{r['control_effect_size']:.3f}</td>" if "control_effect_size" in r else "")
            + f"<td class='text'>{explain(r, test)}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


LIMITS = """
<div class="limits"><h2>What this does not show</h2><ul>
<li><b>Small word sets.</b> Each test uses about a dozen words per set. Another dozen words of the same kinds can
give a different effect size; the bootstrap interval shows how much, and it is often wide. A p-value says whether
the two target sets differ more than a random split of the same words would, not how general the finding is.</li>
<li><b>Many tests at once.</b> With several tests over every layer, some results under p = 0.05 are expected by
chance alone (about 1 in 20 where there is no association). Look for patterns across neighbouring layers rather
than single cells.</li>
<li><b>Templates matter.</b> Results change with the sentence frames the words are put in (May et al., 2019);
bare words and sentences can disagree. Vectors of one word's sentences are averaged, so the word, not the
sentence, is the unit the test counts.</li>
<li><b>Names and terms are proxies.</b> A test about names speaks about those names (their spelling, frequency,
tokenisation), not directly about people; a test about religious terms speaks about those terms.</li>
<li><b>An association is not proof of harm,</b> and no association is not proof of safety. Intrinsic tests like
these correlate weakly with bias in downstream tasks (Goldfarb-Tarrant et al., 2021). Measure the system you
build: error rates per group on your own data (<code>embedkit audit --features F --group-column COL</code>),
counterfactual swaps of names and pronouns.</li>
<li><b>Surface form.</b> Words that differ in length or in how the tokenizer splits them (rare names into many
pieces) can differ in their vectors for that reason alone: a GPT-2-shaped model with random weights, which knows
no meaning, gave d around 1 on the built-in names test. The report flags target sets whose token counts differ;
compare with the same architecture with random weights (<code>--random-control</code> runs it alongside) before
reading such a result as learned bias.</li>
<li><b>Geometry.</b> Cosine similarity in raw hidden states is dominated by a few large dimensions (GPT-2
especially); d is a ratio within one layer, so it is comparable across layers, but the cosines themselves are not.</li>
</ul>
<p>Method: Word Embedding Association Test (Caliskan, Bryson and Narayanan, 2017) on sentence templates (SEAT,
May et al., 2019). Word lists and templates of the built-in tests were written for embedkit.</p></div>
"""


def _png(data: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'>"


def weat_html(
    meta: dict[str, Any], rows: Sequence[dict[str, Any]], tests: Sequence[AssociationTest], heatmap: bytes
) -> str:
    """The report of ``embedkit audit --model``."""
    e = html.escape
    by_test: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_test.setdefault(r["test"], []).append(r)
    settings = (
        f"layers {', '.join(map(str, meta['layers']))}; pooling {', '.join(meta['pooling'])}; "
        f"{meta['permutations']:,} random splits per test where the exact test would need more than "
        f"{meta['exact_limit']:,}; {meta['bootstrap']:,} bootstrap resamples; seed {meta['seed']}"
    )
    body = [
        f"<h1>Bias audit: {e(meta['model'])}</h1>",
        f"<p>{len(tests)} association tests, {e(settings)}. Created {e(meta['created_at'])}.</p>",
        "<h2>How to read it</h2>",
        "<p>Each test asks whether two sets of target words (X and Y, e.g. male and female terms) differ in how close "
        "their vectors lie to two sets of attribute words (A and B, e.g. career and family words). The effect size "
        "<i>d</i> counts how many standard deviations apart X and Y lie on the A-versus-B axis: positive means X "
        "leans to A and Y to B, negative the reverse; it lies between -2 and 2, and 0.2 / 0.5 / 0.8 are commonly read "
        "as small / medium / large. The p-value is the share of random re-splits of the target words that show an "
        "association at least as strong in the same direction. p (X~A) is WEAT's one-sided test as the sets are "
        "written: rows with p &lt; 0.05 are shaded orange. p (X~B) is the same test the other way round: rows "
        "significant only that way are shaded blue (each is a 5% test; reading both doubles the false alarms).</p>",
        _png(heatmap, "effect size per test and layer"),
        "<h2>Results per test</h2>",
    ]
    body += [_test_section(t, by_test[t.name], meta["token_gap_warning"]) for t in tests if t.name in by_test]
    body.append(LIMITS)
    return _page(f"embedkit audit: {meta['model']}", body)


def _group_reading(row: dict[str, Any]) -> str:
    lift = row["probe_accuracy"] - row["majority_share"]
    if row["p_value"] >= ALPHA and lift < 0.05:
        return (
            "The groups' vectors are not distinguishable here: their spread is what random relabelling gives "
            f"(p = {_p(row['p_value'])}) and a linear probe does no better than guessing the largest group."
        )
    return (
        f"The vectors encode the group: a linear probe predicts it with accuracy {row['probe_accuracy']:.3f} where "
        f"always guessing the largest group gives {row['majority_share']:.3f}, and the groups lie further apart "
        f"than random relabelling puts them (p = {_p(row['p_value'])}). A model trained on these features can "
        "use group membership, wanted or not; check its errors per group."
    )


def groups_html(
    meta: dict[str, Any], rows: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]], figure: bytes
) -> str:
    """The report of ``embedkit audit --features F --group-column COL``."""
    e = html.escape
    body = [
        f"<h1>Group separation: {e(str(meta['features']))}</h1>",
        f"<p>Group column <code>{e(meta['group_column'])}</code>: "
        + ", ".join(f"{e(g)} ({n})" for g, n in zip(meta["groups"], meta["sizes"]))
        + (f"; {meta['skipped_rows']} row(s) without a group or a vector left out" if meta["skipped_rows"] else "")
        + f". Model {e(str(meta['model']))}. Created {e(meta['created_at'])}.</p>",
        "<h2>How to read it</h2>",
        "<p>For each embedding column: how well a cross-validated linear probe (standardised logistic regression, "
        f"{meta['cv']} folds) predicts the group from the vector, against always guessing the largest group; the "
        "between-group spread of the unit-length vectors and its permutation p-value "
        f"({meta['permutations']:,} random relabellings); and the cosine distance between group centroids.</p>",
        _png(figure, "probe accuracy per layer"),
        "<table><tr><th class='text'>column</th><th>layer</th><th class='text'>pooling</th><th>probe accuracy</th>"
        "<th>majority share</th><th>spread</th><th>p</th><th class='text'>in plain words</th></tr>",
    ]
    for r in rows:
        body.append(
            f"<tr><td class='text'>{e(r['column'])}</td><td>{r['layer']}</td>"
            f"<td class='text'>{e(r['pooling'])}</td><td>{r['probe_accuracy']:.3f}</td>"
            f"<td>{r['majority_share']:.3f}</td><td>{r['spread']:.4g}</td>"
            f"<td>{_p(r['p_value'])}</td><td class='text'>{_group_reading(r)}</td></tr>"
        )
    body.append(
        "</table><h2>Centroid cosine distances</h2><table><tr><th class='text'>column</th>"
        "<th class='text'>group A</th><th class='text'>group B</th><th>distance</th></tr>"
    )
    for p in pairs:
        body.append(
            f"<tr><td class='text'>{e(p['column'])}</td><td class='text'>{e(p['group_a'])}</td>"
            f"<td class='text'>{e(p['group_b'])}</td><td>{p['cosine_distance']:.5f}</td></tr>"
        )
    body.append(
        "</table><div class='limits'><h2>What this does not show</h2><ul>"
        "<li>Separable groups are not by themselves harm: text about different groups can differ for good "
        "reasons. What matters is whether a model built on the vectors errs more for one group: compare error "
        "rates per group on held-out data.</li>"
        "<li>Centroid distances in raw hidden states are small and dominated by a few large dimensions; "
        "compare them between columns of one file, not between models.</li>"
        "<li>Small groups give noisy probe scores; a group with few rows can look separable by chance.</li>"
        "</ul></div>"
    )
    return _page(f"embedkit audit: groups in {meta['features']}", body)


def _page(title: str, body: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


__all__ = ["explain", "groups_html", "magnitude", "weat_html"]
