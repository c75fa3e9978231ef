"""Chapter 7, the verdict: every claim beside what this run measured (ragft.verdict), as a table, a
forest plot and counts the front page shows. Reads the other chapters' results of the same run; runs
in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import costs, report, results, settings
from ..claims import load_claims
from ..decide import (ACTIAN_VOLUME_BANDS, ERGINI_MIN_CALLS_PER_MONTH, HEYM_STATIC_QUERIES_PER_DAY, Reader,
                      decide)
from ..plan import prose_terms, the_plan
from ..results import ChapterRun, Clock, Measured, open_chapter
from ..prose import glue
from ..stats import DIRECTION_ONLY, RATE, UNINFORMATIVE
from ..verdict import (NOT_AT_CPU, NOT_DECIDED, NOT_FIT, NOT_TESTABLE, VERDICTS, LedgerRow, claim_row, counts, family,
                       marked, not_measured, seed_verdicts_text)

CHAPTER = "07_verdict"
# the chapters whose comparisons the ledger reads (published results stand in when none has run here)
EARLIER_CHAPTERS = ("01_prompting", "02_rag", "03_finetune", "04_raft", "05_freshness", "06_cost")
# the counts the front page and the prose cite: the two bounds count together as uninformative
COUNT_KEYS = {"supported": "n_supported", DIRECTION_ONLY: "n_direction_only", "contradicted": "n_contradicted",
              "depends": "n_depends",
              NOT_DECIDED: "n_not_decided", "uninformative": "n_uninformative", NOT_FIT: "n_not_fit",
              NOT_AT_CPU: "n_not_at_cpu_scale", NOT_TESTABLE: "n_not_testable"}
COLOURS = {"supported": "tab:green", DIRECTION_ONLY: "tab:olive", "contradicted": "tab:red", "depends": "tab:orange",
           NOT_DECIDED: "tab:gray", **dict.fromkeys(UNINFORMATIVE.values(), "tab:purple")}
# marker shape and fill tell the verdicts apart without colour (greyscale print, colour blindness)
MARKERS = {"supported": ("o", True), DIRECTION_ONLY: ("D", True), "contradicted": ("X", True), "depends": ("s", True),
           NOT_DECIDED: ("o", False), UNINFORMATIVE["floor"]: ("v", False), UNINFORMATIVE["ceiling"]: ("^", False),
           UNINFORMATIVE["floor and ceiling"]: ("d", False)}


@dataclass
class Verdicts:
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    params: object
    rows: list[LedgerRow]
    claims: dict
    chapters: list[str]  # the chapters whose results the ledger read
    docs: dict  # those chapters' results
    origin: dict = field(default_factory=dict)  # chapter -> "this run" | the published results it fell back to
    comparisons: dict = field(default_factory=dict)  # the family: comparison id -> recomputed, adjusted comparison


def setup(params) -> Verdicts:
    settings.configure(params)
    folder, clock = open_chapter(CHAPTER)
    with clock.stage("ledger"):
        chapter_results = {k: v for k, v in results.load_results(results.results_dir()).items()
                           if k not in ("00_front", CHAPTER)}
        origin = dict.fromkeys(chapter_results, "this run")
        if not chapter_results:  # this chapter alone (a reader's papermill run): the published verdicts, labelled
            for chapter in EARLIER_CHAPTERS:
                published = results.read_published(chapter, params.profile)
                if published is not None:
                    chapter_results[chapter], origin[chapter] = published
            if origin:
                print(f"No chapter has run in this run folder ({results.results_dir().parent}): the ledger reads "
                      f"the {', '.join(sorted(set(origin.values())))} of chapters {', '.join(sorted(origin))}.")
        claims = load_claims()
        comparisons, elsewhere = family(chapter_results), not_measured(chapter_results)
        rows = [claim_row(c, comparisons, elsewhere) for c in claims.values()]
    return Verdicts(clock, folder, params, rows, claims, sorted(chapter_results), chapter_results, origin, comparisons)


def ledger_table(v: Verdicts) -> pd.DataFrame:
    """One line per claim: its words, sources (bibliography keys), source figure, what this run
    measured, the verdict, why, and the chapter that measured it."""
    lines = []
    for r in v.rows:
        c = v.claims[r.claim]
        if r.n is None:  # untested, or a figure rebuilt by arithmetic (chapter 6)
            measured = f"{r.measured} ({r.comparison})" if r.measured else "–"
        else:
            measured = f"{r.difference()}, n = {r.n} ({r.comparison})"
        p = "–" if r.p is None else f"{r.p:.2g}" + ("" if r.p_adjusted is None else f" / {r.p_adjusted:.2g}")
        lines.append({"claim": r.claim, "what the sources say": c.claim, "sources": ", ".join(c.sources),
                      "their figure": c.figure, "measured here": measured, "p raw / Holm": p,
                      "verdict": marked(r.as_dict()), "each training seed": r.seeds or "–",
                      "changed by the adjustment": "; ".join(r.changed_by_adjustment or []) or "–",
                      "size vs stated": r.size or "–", "declared before any result": r.declared or "–",
                      "upper bound": "yes: an arm had what no reader has" if r.upper_bound else "–",
                      "what the upper bound was given": r.upper_bound or "–",
                      "evidence or reason": r.reason, "chapter": r.chapter,
                      "at larger scale": c.scales})
    return pd.DataFrame(lines).set_index("claim")


REASON_COLUMNS = ["evidence or reason", "changed by the adjustment", "size vs stated", "declared before any result",
                  "what the upper bound was given", "each training seed", "at larger scale"]  # long text: a list of their own (show_reasons)


def show_ledger(table: pd.DataFrame, columns: list[str]) -> None:
    """Some of the ledger's columns as HTML, each chapter a link to its page (the book's pages sit side
    by side): the short columns; REASON_COLUMNS go to a list (show_reasons)."""
    from html import escape

    from IPython.display import HTML, display

    shown = table[columns].map(lambda text: escape(str(text)))
    if "chapter" in columns:
        shown["chapter"] = [f'<a href="{escape(ch)}.html">{escape(ch)}</a>' for ch in table["chapter"]]
    display(HTML(shown.to_html(escape=False, justify="left")))


def show_as_list(items: list[tuple[str, dict]]) -> None:
    """Long texts as a list, one entry per (title, {label: text}), the dashes left out: a table of
    them has rows taller than a laptop's screen (chapter 7's reasons and choices: 1,059 and 1,717
    pixels at 1280), a list reads down the page."""
    from html import escape

    from IPython.display import HTML, display

    entries = []
    for title, parts in items:
        said = "; ".join(f"<em>{escape(label)}</em>: {escape(str(text))}" for label, text in parts.items()
                         if str(text) not in ("–", "", "None"))
        entries.append(f"<dt>{escape(title)}</dt><dd>{said}</dd>")
    display(HTML(f"<dl>{''.join(entries)}</dl>"))


def show_reasons(table: pd.DataFrame) -> None:
    """The ledger's long columns (REASON_COLUMNS), each claim an entry of a list."""
    show_as_list([(claim, dict(row)) for claim, row in table[REASON_COLUMNS].iterrows()])


def show_choices() -> None:
    """The plan's choices, each an entry of a list: what was chosen, in which chapter, on what data, and the evidence."""
    show_as_list([(c["what"], {k: v for k, v in c.items() if k != "what"}) for c in the_plan().choices])


def model_and_hardware(v: Verdicts) -> tuple[str, str]:
    """What the run's language model was and what it ran on, from the chapters' provenance."""
    prov = next((d["provenance"] for d in v.docs.values() if d.get("provenance", {}).get("model_params")), None)
    if prov is None:
        return "the chapters' language model", "this machine"
    size = f"{prov['model']} ({prov['model_params'] / 1e6:,.0f} M parameters, {prov['dtype']})"
    where = prov["gpu"] or f"a {prov['cpu']} CPU, {prov['threads']} threads"
    return size, where


def forest(v: Verdicts):
    """Each tested claim's measured difference with its 95 % interval, coloured by verdict."""
    import matplotlib.pyplot as plt

    shown = [r for r in v.rows if r.n is not None and r.kind in ("binary", RATE) and r.test == "paired"]  # one axis: points
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(shown) + 1.2))
    for y, r in enumerate(shown):
        stated = v.claims[r.claim].effects.get(r.comparison)
        if stated:  # the source's own difference: a grey band for a range, a diamond for one figure
            low, high = stated
            if low < high:
                ax.plot([low, high], [y, y], color="black", lw=6, alpha=0.18, solid_capstyle="butt",
                        label=_once(ax, "the source's stated range"))
            else:
                ax.plot([low], [y], marker="D", color="black", mfc="none", ms=5, ls="none",
                        label=_once(ax, "the source's stated difference"))
        marker, filled = MARKERS.get(r.verdict, ("o", False))
        colour = COLOURS.get(r.verdict, "black")
        ax.errorbar(100 * r.diff, y, xerr=[[100 * (r.diff - r.ci_low)], [100 * (r.ci_high - r.diff)]],
                    fmt=marker, color=colour, mfc=colour if filled else "white", ms=6, capsize=3,
                    label=_once(ax, r.verdict, containers=True))
    ax.legend(fontsize=7, loc="lower right")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(shown)), [f"{r.claim}: {r.comparison} (n={r.n})" for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="measured difference, points (95 % interval); the marker's shape gives the verdict",
           title="What the book measured, claim by claim")
    ax.xaxis.label.set_size(7)
    fig.tight_layout()
    return fig


def _once(ax, label: str, containers: bool = False) -> str | None:
    """A legend label the first time it is drawn on these axes (lines, or error bars), None after."""
    drawn = ax.containers if containers else ax.lines
    return None if label in [h.get_label() for h in drawn] else label


def tally(v: Verdicts) -> dict:
    """Claims by verdict, the uninformative kinds together."""
    out = counts(v.rows)
    out["uninformative"] = sum(out.pop(text) for text in UNINFORMATIVE.values())
    return out


def headline_metrics(v: Verdicts) -> Measured:
    """The ledger's counts as metrics: claims by verdict, the family, what the adjustment changed, and
    what was declared in its present form before any published result of it."""
    m, by_verdict = Measured(), tally(v)
    m.metric("n_claims", len(v.rows), "exact")
    for verdict, key in COUNT_KEYS.items():
        m.metric(key, by_verdict[verdict], "exact")
    family_rows = [c for c in v.comparisons.values() if c.get("p_adjusted") is not None]
    m.metric("n_family", len(family_rows), "exact")
    m.metric("n_changed_by_adjustment", sum(bool(c.get("verdict_raw")) for c in family_rows), "exact")
    # "declared before the run": the family's comparisons, and the claims whose verdict rests on
    # comparisons all declared in their present form before any published result of them
    m.metric("n_family_declared_before_any_result",
             sum(bool(c.get("declared_before_any_result")) for c in family_rows), "exact")
    resting = [r for r in v.rows if r.declared is not None]
    m.metric("n_claims_declared_before_any_result", sum(r.declared == "yes" for r in resting), "exact")
    m.metric("n_claims_resting_on_comparisons", len(resting), "exact")
    return m


def headline(v: Verdicts) -> dict:
    m, by_verdict = headline_metrics(v), tally(v)
    for key in [*COUNT_KEYS.values(), "n_family_declared_before_any_result", "n_claims_declared_before_any_result",
                "n_claims_resting_on_comparisons", "n_family", "n_changed_by_adjustment"]:
        glue(key, m[key])
    for key, text in prose_terms().items():
        glue(key, text)
    glue("n_claims", len(v.rows))
    glue("verdict_chapters", ", ".join(v.chapters) or "none")
    model, hardware = model_and_hardware(v)
    glue("verdict_model", model)
    glue("verdict_hardware", hardware)
    return {"counts": by_verdict, "verdicts": VERDICTS}


LEDGER_KEYS = ("claim", "verdict", "chapter", "n", "diff", "ci_low", "ci_high", "p", "p_adjusted", "size", "reason",
               "upper_bound")


def family_table(v: Verdicts) -> pd.DataFrame:
    """Every comparison of the family and beside it, one line each: raw and adjusted p, verdict, the
    raw verdict where the adjustment changed it, bound and size against the stated effect, and each
    training seed's verdict where its arms have seeds."""
    table = report.comparisons_table({"": {"comparisons": list(v.comparisons.values())}})
    table["before the adjustment"] = [v.comparisons[k].get("verdict_raw") or "–" for k in table.index]
    table["each training seed"] = [seed_verdicts_text(v.comparisons[k]) if v.comparisons[k].get("seeds") else "–"
                                   for k in table.index]
    return table


def declared_table(v: Verdicts) -> pd.DataFrame:
    """Each comparison of this run beside the commit that declared it in its present form, the first
    commit with a published result of it, and whether the declaration came first (data/plan_declared.yaml,
    built from git history by ragft.declared)."""
    lines = [{"comparison": k, "role": c.get("role", "–"), "declared in its present form": c.get("declared_in") or "–",
              "first published result": c.get("first_result_in") or "none",
              "declared before any result": {True: "yes", False: "no"}.get(c.get("declared_before_any_result"), "–")}
             for k, c in v.comparisons.items() if c.get("kind") != "computed"]
    return pd.DataFrame(lines).set_index("comparison")


def save(v: Verdicts) -> Path:
    """The chapter's one recording step: the counts, every comparison as the ledger judged it, the
    ledger itself (and as a table, with the comparison shown and its kind)."""
    kept = Measured.merged(headline_metrics(v), Measured(tables={"ledger": [r.as_dict() for r in v.rows]}))
    return ChapterRun(CHAPTER, v.params, v.folder, v.clock).save(kept, list(v.comparisons.values()),
                      extra_keys={"ledger": [{k: getattr(r, k) for k in LEDGER_KEYS} for r in v.rows]})


# A few readers the articles write for, to show the helper at work (your own: the reader_ parameters).
TYPICAL_READERS = {
    "support bot over a product catalogue that changes weekly": dict(task="facts", updates_per_month=4,
                                                                      queries_per_month=2e6, private_documents=True,
                                                                      latency_budget_ms=500),
    "JSON extraction from forms, 5 M calls a month, 500 examples": dict(task="format", queries_per_month=5e6,
                                                                         examples=500, rag_baseline=True, eval_set=True,
                                                                         ready_to_retrain=True),
    "assistant over a static policy manual, 50 K queries a month": dict(task="facts", updates_per_month=0.1,
                                                                         queries_per_month=5e4, private_documents=True),
    "domain assistant that must know facts and answer in a fixed form": dict(task="both", updates_per_month=0.5,
                                                                             queries_per_month=60e6, examples=2000),
}


def advice_table(v: Verdicts, readers: dict) -> pd.DataFrame:
    """Each reader's advice from each rule (D1-D3), with its reasons and this run's verdict on every
    claim a reason rests on."""
    verdict_of = {r.claim: r.verdict for r in v.rows}
    retrieval_ms = v.docs.get("06_cost", {}).get("metrics", {}).get("retrieval_added_ms_p50")
    lines = []
    for label, reader in readers.items():
        for advice in decide(_reader(reader), retrieval_ms):
            claims = sorted({c for reason in advice.reasons for c in reason.claims})
            lines.append({"reader": label, "rule": advice.rule, "advice": advice.approach,
                          "because": "; ".join(reason.says for reason in advice.reasons),
                          "the book's evidence": "; ".join(f"{c}: {verdict_of.get(c, 'not in the claims file')}" for c in claims)})
    return pd.DataFrame(lines).set_index(["reader", "rule"])


def _reader(reader):
    return reader if isinstance(reader, Reader) else Reader(**reader)


def reader_costs(v: Verdicts, readers: dict) -> pd.DataFrame | None:
    """Each reader's monthly cost per approach at their volume and update frequency, priced by chapter
    6's model with this run's measured tokens (None when chapter 6 has not run here)."""
    from dataclasses import replace

    if "06_cost" not in v.docs:
        return None
    approaches, workload = costs.model_from_results(v.docs["06_cost"])
    lines = []
    for label, reader in readers.items():
        r = _reader(reader)
        w = replace(workload, queries_per_month=r.queries_per_month, updates_per_month=r.updates_per_month)
        lines.append({"reader": label, **{f"{n} ($/month)": round(costs.monthly_usd(a, w)) for n, a in approaches.items()},
                      "cheapest": costs.cheapest(list(approaches.values()), w)})
    return pd.DataFrame(lines).set_index("reader")


# The volumes the rules name, in queries a month (decide.py holds them as the sources state them).
def _rule_volumes():
    return [("D1", "over 100 K queries a day on a static task: consider fine-tuning", 30 * HEYM_STATIC_QUERIES_PER_DAY),
            ("D2", "over 50 K calls a month before fine-tuning", ERGINI_MIN_CALLS_PER_MONTH),
            ("D3 / S6", "under 10 M queries a month retrieval is cheaper", ACTIAN_VOLUME_BANDS[0]),
            ("D3 / S6", "over 50 M: fine-tune or hybrid", ACTIAN_VOLUME_BANDS[1])]


UPDATES = (0.0, 1.0, 4.0)


def thresholds_table(v: Verdicts) -> pd.DataFrame | None:
    """The rules' volume thresholds, and below them the volume where, in this run's cost model, the
    fine-tune becomes cheaper than RAG at a few update frequencies (None when chapter 6 has not run here)."""
    from dataclasses import replace

    if "06_cost" not in v.docs:
        return None
    a, w = costs.model_from_results(v.docs["06_cost"])
    lines = [{"where": rule, "what": says, "queries a month": f"{volume:,.0f}"} for rule, says, volume in _rule_volumes()]
    for u in UPDATES:
        q = costs.crossover(a["fine-tune"], a["RAG"], replace(w, updates_per_month=u))
        lines.append({"where": "this run (chapter 6)", "what": f"the fine-tune costs less than RAG above, at {u:g} updates a month",
                      "queries a month": "never" if q is None else f"{q:,.0f}"})
    return pd.DataFrame(lines).set_index(["where", "what"])
