"""Tables for readers: the same rows the results file stores, with units and readable numbers."""

from __future__ import annotations

import math

import pandas as pd

from .plan import the_plan
from .stats import SIGNFLIP_MC, score_kind
from .verdict import difference_text, marked, run_names

# row key -> (column header, formatter); columns appear in this order when present.
_PCT = "{:.0%}".format
_COLUMNS = {
    "n": ("questions", "{:.0f}".format),
    "contains": ("gold contained [95 % CI]", None),
    "em": ("exact match", _PCT),
    "wordy": ("answers in a sentence", _PCT),
    "f1": ("token F1", "{:.2f}".format),
    "refusal_acc": ("refuses unanswerable", _PCT),
    "false_refusal": ("refuses answerable", _PCT),
    "documents": ("documents", "{:.0f}".format),
    "prompt_tokens": ("prompt tokens / query", "{:,.0f}".format),
    "completion_tokens": ("completion tokens / query", "{:.1f}".format),
    "prefill_s": ("shared prefill (s)", "{:.1f}".format),
    "latency_s": ("latency / query (s)", "{:.2f}".format),
    "cost_per_1k_usd": ("$ / 1,000 queries", "{:.3f}".format),
}


def join_words(words: list[str]) -> str:
    """"a", "a and b", "a, b and c": a list as a sentence names it."""
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def conditions_table(rows: list[dict]) -> pd.DataFrame:
    """One line per condition (rows from metrics.condition_row), formatted for reading."""
    out = {}
    for row in rows:
        line = {}
        for key, (header, fmt) in _COLUMNS.items():
            if key not in row:
                continue
            value = row[key]
            if key == "contains" and not _missing(value):
                line[header] = f"{value:.0%} [{row['contains_lo']:.0%}, {row['contains_hi']:.0%}]"
            else:
                line[header] = "–" if _missing(value) else fmt(value)
        out[row["condition"]] = line
    table = pd.DataFrame.from_dict(out, orient="index").fillna("–")  # a score a condition has no items for
    table.index.name = "condition"
    return table


def show_full_text(table: pd.DataFrame) -> None:
    """Display a table of model outputs without pandas cutting long cells at 50 characters."""
    from IPython.display import display

    with pd.option_context("display.max_colwidth", None):
        display(table)


def show_with_notes(table: pd.DataFrame, notes: str) -> None:
    """A table whose long texts are numbered notes below it (markdown), so that each row stays a line."""
    from IPython.display import Markdown, display

    with pd.option_context("display.max_colwidth", None):
        # the theme's table look (its class) with the texts read from the left
        display(table.style.set_properties(**{"text-align": "left"}).set_table_attributes('class="dataframe"'))
    display(Markdown(notes))


def comparisons_table(chapter_results: dict[str, dict]) -> pd.DataFrame:
    """Every comparison the chapters' results files state, one line each, for reading: its test's
    interval and p (adjusted where chapter 7 has adjusted the family), its verdict (which names a bound
    it sits at, and reads "fragile (training seed)" where its seeds' verdicts disagree) and its size
    against the source's stated effect."""
    rows = []
    for chapter, doc in chapter_results.items():
        for c in doc.get("comparisons", []):
            computed = c.get("kind") == "computed"  # a cost figure rebuilt by arithmetic (chapter 6)
            check = c.get("test") == "check"
            p = "–" if computed or check else f"{c['p']:.2g}"
            if c.get("p_method") == SIGNFLIP_MC:
                p += " (Monte Carlo)"
            if c.get("p_adjusted") is not None:
                p += f" (Holm {c['p_adjusted']:.2g})"
            rows.append({
                "comparison": c["claim"], "chapter": c.get("chapter", chapter),
                "role": "computed check" if computed else c.get("role", "primary"),
                "conditions": "stated figure vs rebuilt" if computed else f"{c['a']} vs {c['b']}",
                "n": "–" if computed else c["n"],
                "difference [interval]": f"{c['computed']} (stated {c['stated']})" if computed
                else difference_text(c["diff"], c["ci_low"], c["ci_high"], score_kind(c), c.get("test", "paired")),
                # a bound shows in it ("uninformative here (floor)"), and whether its training seeds disagree
                "p": p, "verdict": marked(c),
                "vs stated effect": c.get("size_vs_stated") or "–",
                "units to detect the smallest effect": f"{c['n_needed']:,}" if c.get("n_needed") else "–",
                "upper bound": the_plan().upper_bound(c["claim"], short=True, named=None if computed else run_names(c)) or "–"})
    columns = ["comparison", "chapter", "role", "conditions", "n", "difference [interval]", "p", "verdict",
               "vs stated effect", "units to detect the smallest effect", "upper bound"]
    return pd.DataFrame(rows, columns=columns).set_index("comparison")


def stated_table(chapter: str, stated) -> pd.DataFrame:
    """comparisons_table of one chapter's stated comparisons (ragft.prose.StatedComparison) that
    this run measured, as its notebook holds them."""
    return comparisons_table({chapter: {"comparisons": [s.comparison.as_dict() for s in stated if s.comparison is not None]}})
