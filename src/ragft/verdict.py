"""The ledger: every claim of data/claims.yaml beside what the chapters of one run measured, with a
verdict that comes from its primary comparisons, decided on the family's adjusted p (ragft.plan),
never typed.

A claim's verdict, from the primary comparisons it lists that this run holds (its parts: a claim
holds only when every part does):
- decided parts disagree, or one depends (a cost figure that holds only at its source's unstated
  inputs): **depends**;
- a part's trained arm did not reach its declared fitness (the plan's `fitness` rules): **not
  decided: an arm did not reach its fitness**, whatever the other parts say;
- a part is uninformative (an arm at the floor or ceiling of its metric by less than the smallest
  effect of interest): **uninformative here (floor / ceiling)**;
- a part is not decided at the adjusted level: **not decided at this n**, with the questions that
  would detect the smallest effect of interest;
- every part decided and agreeing: that verdict (supported / contradicted); supported in direction by
  every part, with some part's interval reaching below its smallest effect of interest: **direction
  supported, size not shown**;
- an equivalence the claim lists `against` itself (claims.yaml) answers with the parts that test the
  same two arms: shown, it is a part contradicted and they decide nothing; not shown, it decides
  nothing and they answer;
- none held: **not testable here** (or **not testable at cpu scale** where only the gpu profile can
  run an arm), with the reason.
Each row also carries the raw and adjusted p of the part it shows, whether the adjustment changed a
part's verdict, and the parts' size judgments against the sources' stated effects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .claims import Claim, load_claims
from .constants import DEPENDS
from .corpus.injection import ARM_LABELS
from .declared import record
from .plan import BOOK, FRAGILE, adjust, rejudge, seed_verdicts, the_plan
from .stats import (CONTRADICTED, DECIDED, DIRECTION_ONLY, NOT_DECIDED, NOT_FIT, RATE, SUPPORTED, UNINFORMATIVE,
                    score_kind)

NOT_TESTABLE = "not testable here"
NOT_AT_CPU = "not testable at cpu scale"
VERDICTS = (SUPPORTED, DIRECTION_ONLY, CONTRADICTED, DEPENDS, NOT_DECIDED, *UNINFORMATIVE.values(), NOT_FIT, NOT_AT_CPU,
            NOT_TESTABLE)
FEASIBLE_N = 100_000  # units beyond which "it would need N" stops meaning anything


@dataclass
class LedgerRow:
    claim: str
    verdict: str
    chapter: str
    n: int | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str
    comparison: str | None = None  # the comparison whose numbers the row shows
    kind: str = "binary"  # its score: binary or rate (a difference of rates, in points), continuous, or computed
    measured: str | None = None  # a computed check's figure (a price rebuilt from measured tokens)
    p: float | None = None  # raw p of the shown comparison
    p_adjusted: float | None = None  # its Holm-adjusted p in the book's family
    changed_by_adjustment: list | None = None  # parts whose verdict the adjustment changed (raw verdicts)
    size: str | None = None  # the parts' sizes against the sources' stated effects
    bound: str | None = None
    test: str = "paired"
    level: float = 0.95
    declared: str | None = None  # whether the parts it rests on were declared before any result ("yes" / "no: ...")
    upper_bound: str | None = None  # the parts whose arm was given what no reader has, and what (the plan's upper_bounds)
    fragile: str | None = None  # the parts whose training seeds' verdicts disagree, with each seed's (the plan's `seeds`)
    seeds: str | None = None  # each training seed's verdict of every part that has seeds, agreeing or not

    def difference(self) -> str:
        """The measured difference with its interval, in points for rates, as numbers otherwise."""
        if self.n is None:
            return self.measured or "–"
        return difference_text(self.diff, self.ci_low, self.ci_high, self.kind, self.test)

    def as_dict(self) -> dict:
        return asdict(self)


def difference_text(diff: float, low: float, high: float, kind: str = "binary", test: str = "paired") -> str:
    """A difference with its interval: in points for rates, as a ratio for timings, as numbers otherwise."""
    import math

    if test == "welch-log":
        return f"{math.exp(diff):.3g}x [{math.exp(low):.3g}, {math.exp(high):.3g}]"
    if kind in ("binary", RATE):
        return f"{100 * diff:+.0f} points [{100 * low:+.0f}, {100 * high:+.0f}]"
    return f"{diff:+.3g} [{low:+.3g}, {high:+.3g}]"


def _read_against(claim: Claim, held: list[dict], shown_only: list[dict]) -> tuple[list[dict], list[dict]]:
    """A claim's parts with its `against` equivalences read as answers to it. An equivalence the claim
    lists against itself (a fine-tune within the margin of RAG, where the claim says RAG wins) and the
    parts that test the same two arms for a difference are one question with three answers: the
    equivalence shown contradicts the claim and the others decide nothing; not shown, it decides
    nothing and the others answer. Either way the parts that decide nothing are shown beside it."""
    for key in claim.against:
        found = next((c for c in held if c["claim"] == key), None)
        if found is None:
            continue
        pair = [c for c in held if c is not found and (c["a"], c["b"]) == (found["a"], found["b"])]
        if found["verdict"] == SUPPORTED:
            held = [({**c, "verdict": CONTRADICTED, "against": True} if c is found else c) for c in held if c not in pair]
            shown_only = shown_only + pair
        else:
            held, shown_only = [c for c in held if c is not found], shown_only + [found]
    return held, shown_only


def _evidence(c: dict) -> str:
    if c.get("against"):  # an equivalence shown, read against the claim it is listed under
        return (f"{c['claim']} ({c['a']} vs {c['b']}): equivalent within its margin, which contradicts the claim, "
                f"at n = {c['n']}, p = {c['p']:.2g}" + (f", adjusted {c['p_adjusted']:.2g}" if c.get("p_adjusted") is not None else ""))
    if c.get("kind") == "computed":  # a figure rebuilt by arithmetic: its note says from what
        return f"{c['claim']}: {c['verdict']}: {c['note']}"
    if c.get("test") == "check":  # equal by construction: shown with what was measured, never tested
        return f"{c['claim']} ({c['a']} vs {c['b']}): {c['verdict']} (measured {c['diff']:+.3g} at n = {c['n']})"
    p = f"p = {c['p']:.2g}" + (f", adjusted {c['p_adjusted']:.2g}" if c.get("p_adjusted") is not None else "")
    return f"{c['claim']} ({c['a']} vs {c['b']}): {c['verdict']} at n = {c['n']}, {p}"


def _deciding(c: dict) -> bool:
    """A part that decides its claim: primary, and tested or rebuilt by arithmetic (not a sanity check)."""
    return c.get("kind") == "computed" or (c.get("role", "primary") == "primary" and c.get("test", "paired") != "check")


def claim_row(claim: Claim, comparisons: dict[str, dict], elsewhere: dict[str, str] | None = None) -> LedgerRow:
    """One claim's ledger row from the run's comparisons ({comparison id: comparison dict}, adjusted
    by the family); `elsewhere` ({comparison id: why}, from `not_measured`) names those the run's
    profile leaves to other profiles by the plan's declaration."""
    listed = [comparisons[k] for k in claim.comparisons if k in comparisons]
    away = {k: why for k, why in (elsewhere or {}).items() if k in claim.comparisons and k not in comparisons}
    if claim.untested:  # what its comparisons measured is shown beside the reason, never as a verdict
        shown = "; ".join(_evidence(c) for c in listed)
        return LedgerRow(claim.id, NOT_TESTABLE, claim.chapter, None, None, None, None,
                         claim.untested + (f" (shown: {shown})" if shown else ""))
    held = [c for c in listed if _deciding(c)]
    shown_only = [c for c in listed if not _deciding(c)]
    held, shown_only = _read_against(claim, held, shown_only)
    if not held and away and not shown_only:
        return LedgerRow(claim.id, NOT_AT_CPU, claim.chapter, None, None, None, None,
                         "; ".join(f"{k}: {why}" for k, why in away.items()))
    if not held:
        why = (f"this run holds none of its comparisons ({', '.join(claim.comparisons)}): run chapter {claim.chapter} "
               f"in the same run")
        if shown_only:
            why = "; ".join(f"{c['claim']}: {c['verdict']}" for c in shown_only) + " (shown, not a test)"
        return LedgerRow(claim.id, NOT_TESTABLE, claim.chapter, None, None, None, None, why)
    decided = [c for c in held if c["verdict"] in (*DECIDED, DEPENDS)]
    bounded = [c for c in held if c["verdict"] in UNINFORMATIVE.values()]
    unfit = [c for c in held if c["verdict"] == NOT_FIT]
    undecided = [c for c in held if c not in decided and c not in bounded and c not in unfit]
    kinds = {c["verdict"] for c in decided}
    if len(kinds) > 1 and not kinds <= {SUPPORTED, DIRECTION_ONLY}:  # supported in direction by all parts agrees
        verdict, shown = DEPENDS, next((c for c in decided if c["verdict"] == DEPENDS), decided[0])
    elif unfit:  # an arm that did not learn what it was trained on speaks for no method
        verdict, shown = NOT_FIT, unfit[0]
    elif bounded:
        verdict, shown = bounded[0]["verdict"], bounded[0]
    elif undecided:
        verdict, shown = NOT_DECIDED, max(undecided, key=lambda c: c.get("n") or 0)
    else:  # agreeing; a part whose size was not shown makes the claim's size not shown
        verdict = DIRECTION_ONLY if DIRECTION_ONLY in kinds else decided[0]["verdict"]
        shown = next(c for c in decided if c["verdict"] == verdict)
    reason = "; ".join([_evidence(c) for c in held + shown_only] + [f"{k}: {why}" for k, why in away.items()])
    if verdict in (NOT_DECIDED, NOT_FIT, *UNINFORMATIVE.values()) and decided:
        reason = f"partly decided ({decided[0]['verdict']} in {len(decided)} of {len(held)} parts): {reason}"
    if verdict == NOT_DECIDED:
        need = max((c.get("n_needed") or 0) for c in undecided)
        if need > FEASIBLE_N:
            reason += f"; the smallest effect of interest would need more than {FEASIBLE_N:,} units"
        elif need:
            reason += f"; about {need:,} {shown.get('unit', 'questions')} would detect the smallest effect of interest"
    if verdict in UNINFORMATIVE.values():
        reason += "; " + bound_advice(shown)
    if verdict == NOT_FIT:
        missed = sorted({u for c in unfit for u in c.get("unfit") or []})
        reason += (f"; a trained arm missed its declared fitness ({'; '.join(missed)}): a fine-tune that did not "
                   "learn what it was trained on cannot speak for fine-tuning")
    changed = [f"{c['claim']}: {c['verdict_raw']} before the adjustment" for c in held if c.get("verdict_raw")]
    sizes = [f"{c['claim']}: {c['size_vs_stated']} than stated" if c["size_vs_stated"] != "consistent"
             else f"{c['claim']}: consistent with the stated effect" for c in held if c.get("size_vs_stated")]
    return LedgerRow(claim.id, verdict, shown.get("chapter", claim.chapter), shown["n"], shown["diff"],
                     shown["ci_low"], shown["ci_high"], reason, shown["claim"], score_kind(shown),
                     shown.get("computed"), shown.get("p"), shown.get("p_adjusted"), changed or None,
                     "; ".join(sizes) or None, shown.get("bound"), shown.get("test", "paired"), shown.get("level", 0.95),
                     declared_text([c for c in held if c.get("kind") != "computed"]), upper_bound_text(held),
                     fragile_text(held), seeds_text(held))


def seed_verdicts_text(c: dict) -> str:
    """A seeded comparison's verdict on each training seed alone: "seed 1 <verdict>, seed 2 <verdict>, ..."."""
    return ", ".join(f"seed {s['seed']} {s['verdict']}" for s in c["seeds"])


def seeds_text(parts: list[dict]) -> str | None:
    """Each training seed's verdict of the parts a verdict rests on that have seeds (the plan's
    `seeds.per_seed`), whether they agree or not: "<id>: seed 1 <verdict>, ...; <id>: ...", or None."""
    said = [f"{c['claim']}: {seed_verdicts_text(c)}" for c in parts if c.get("seeds")]
    return "; ".join(said) or None


def fragile_text(parts: list[dict]) -> str | None:
    """The parts a verdict rests on whose training seeds disagree: "fragile (training seed): <id>:
    seed 1 <verdict>, seed 2 <verdict>, ...", or None."""
    said = [f"{c['claim']}: {seed_verdicts_text(c)}" for c in parts if c.get("fragile")]
    return f"{FRAGILE}: " + "; ".join(said) if said else None


def run_names(c: dict) -> tuple[str, str] | None:
    """A comparison's two arms as the run named them (the plan's placeholders filled), where it records them."""
    return (c["a"], c["b"]) if "a" in c and "b" in c else None


def upper_bound_text(parts: list[dict]) -> str | None:
    """The parts a verdict rests on whose arm was given what no reader has: "<id>: <arms>: <what>", or None."""
    plan = the_plan()
    said = [f"{c['claim']}: {bound}" for c in parts if (bound := plan.upper_bound(c["claim"], named=run_names(c)))]
    return "; ".join(said) or None


def bound_advice(c: dict) -> str:
    """What would move a comparison off its bound."""
    if c.get("bound") == "floor and ceiling":
        return (f"one arm sits within the smallest effect of interest ({100 * c.get('sesoi', 0):.0f} points) of the floor "
                "and the other within it of the ceiling: the task is impossible for one and trivial for the other, so the "
                "metric shows the direction but no size; a task both can partly do would show how far apart they are")
    if c.get("bound") == "ceiling":
        return (f"both arms sit within the smallest effect of interest ({100 * c.get('sesoi', 0):.0f} points) of the "
                "ceiling: a harder task (a larger corpus, harder questions, a smaller k) would leave room to differ")
    return (f"the higher arm sits within the smallest effect of interest ({100 * c.get('sesoi', 0):.0f} points) of the "
            "floor: a reader able to do the task (a larger model, more training) would leave room to differ")


def ledger(claims: dict[str, Claim], chapter_results: dict[str, dict]) -> list[LedgerRow]:
    """Every claim's row, in the claims file's order, from one run's chapter results: each chapter's
    comparisons recomputed from its outcomes by the plan, then adjusted as one family."""
    comparisons, elsewhere = family(chapter_results), not_measured(chapter_results)
    return [claim_row(c, comparisons, elsewhere) for c in claims.values()]


def not_measured(chapter_results: dict[str, dict]) -> dict[str, str]:
    """{comparison id: why} for the comparisons of these chapters that their profile does not measure
    (the plan's `profiles`)."""
    plan, out = the_plan(), {}
    for chapter, doc in chapter_results.items():
        if doc.get("profile"):
            out |= {k: why for k, why in plan.not_measured(doc["profile"]).items() if plan.get(k).chapter == chapter}
    return out


def family(chapter_results: dict[str, dict]) -> dict[str, dict]:
    """Every comparison of the chapters' results, recomputed from their outcomes by the plan and
    adjusted as one family: {comparison id: comparison dict with its chapter, its declaration record
    (DECLARED_KEYS) and, where an arm was given what no reader has, `upper_bound`: the arms and what
    they were given (the plan's caveat of an upper bound)}."""
    found, plan = [], the_plan()
    for chapter, doc in chapter_results.items():  # a reader's case (chapter 8) is a family of its own
        found += [{**c, "chapter": chapter} for c in rejudge(doc) if plan.family_of(c["claim"]) == BOOK]
    metrics = {chapter: doc.get("metrics") or {} for chapter, doc in chapter_results.items()}
    profiles = {doc.get("profile") for doc in chapter_results.values()} - {None}
    # the family the plan fixes for one profile; results of several (a partial publication read beside
    # another profile's) are adjusted over the comparisons they hold
    declared = record()  # when each was declared, and whether before any published result of it
    profile = next(iter(profiles)) if len(profiles) == 1 else None
    adjusted = seed_verdicts(adjust(found, metrics=metrics, profile=profile), metrics=metrics, profile=profile)
    return {c["claim"]: {**c, **{k: v for k, v in (declared.get(c["claim"]) or {}).items() if k in DECLARED_KEYS},
                         **({"upper_bound": bound} if (bound := plan.upper_bound(c["claim"], named=run_names(c))) else {})}
            for c in adjusted}


DECLARED_KEYS = ("declared_in", "first_result_in", "declared_before_any_result")


def declared_text(parts: list[dict]) -> str | None:
    """Whether the comparisons a verdict rests on were declared in their present form before any
    published result of them: "yes", or "no: ..." naming each part declared after a look."""
    known = [c for c in parts if c.get("declared_in")]
    if not known:
        return None
    late = [f"{c['claim']} (declared {c['declared_in'][:7]}, results since {(c.get('first_result_in') or '?')[:7]})"
            for c in known if not c.get("declared_before_any_result")]
    return "yes" if not late else "no: after a look at results of " + "; ".join(late)


def counts(rows: list[LedgerRow]) -> dict[str, int]:
    """How many claims got each verdict (every verdict present, zeros included)."""
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS}


def summary_sentence(doc: dict | None) -> str:
    """One sentence of the verdict chapter's counts, for the front page (its results file, or None)."""
    if not doc:
        return "The verdict chapter did not run in this run, so no claim has a verdict on this page."
    m = doc["metrics"]
    return (f"Of the {m['n_claims']} claims this book tests, {m['n_supported']} are supported by this run's "
            f"measurements after the correction for the number of tests, {m.get('n_direction_only', 0)} supported in "
            f"direction with a size the interval does not show, {m['n_contradicted']} contradicted, "
            f"{m['n_depends']} depend on the condition, {m['n_not_decided']} are not decided at the number of "
            f"questions this run affords, {m['n_uninformative']} are uninformative here (an arm at the floor or "
            f"ceiling of its metric), {m.get('n_not_fit', 0)} rest on a trained arm that did not reach its fitness, "
            f"{m.get('n_not_at_cpu_scale', 0)} are not testable at cpu scale and {m['n_not_testable']} are not "
            "testable here (yet)."
            + (f" Of the {m['n_claims_resting_on_comparisons']} claims whose verdict rests on comparisons, "
               f"{m['n_claims_declared_before_any_result']} "
               f"{'rests' if m['n_claims_declared_before_any_result'] == 1 else 'rest'} only on comparisons declared before any result of "
               "them; the others' plan entries were written or changed after a look at earlier results."
               if "n_claims_resting_on_comparisons" in m else ""))


def marked(entry: dict) -> str:
    """A comparison's or a ledger row's verdict, with the FRAGILE mark where its training seeds disagree."""
    return entry["verdict"] + (f"; {FRAGILE}" if entry.get("fragile") else "")


# The claims that ask the book's title question (RAG or fine-tuning for knowledge): the front page's
# table of decided claims shows them whatever their verdict
TITLE_CLAIMS = ("K1", "K2", "K3")


@dataclass
class Decided:
    """The front page's claims: one short line each (`table`) and a numbered note each (`notes`, markdown)."""
    table: object  # a DataFrame indexed by claim
    notes: str


def decided_table(doc: dict | None) -> Decided:
    """The decided claims of a verdict results file (supported, supported in direction, contradicted,
    depends) and the title question's (TITLE_CLAIMS) whatever their verdict, for reading on a laptop:
    one line each (the claim in its own words, the verdict, the difference with its interval, the upper
    bound an arm of it was, the number of its note) and below them the notes: the comparison the
    row shows (arms, metric, n), the plan's caveat, what the upper-bound arm was given, whether it
    was declared before any result, and which training seeds disagree."""
    import pandas as pd

    claims, plan, rows, notes = load_claims(), the_plan(), [], []
    measured = {c["claim"]: c for c in (doc or {}).get("comparisons", [])}  # the arms by the names the run gave them
    for r in (doc or {}).get("tables", {}).get("ledger", []):
        if r["verdict"] not in (*DECIDED, DEPENDS) and r["claim"] not in TITLE_CLAIMS:
            continue
        shown = r.get("comparison")
        spec = plan.comparisons.get(shown) if shown else None
        bounds = plan.upper_bound_names(shown) if shown else []
        rows.append({"claim": r["claim"], "what it says": claims[r["claim"]].claim if r["claim"] in claims else "–",
                     "verdict": marked(r),
                     "difference [95 % CI]": LedgerRow(**r).difference(), "upper bound": "; ".join(bounds) or "–",
                     "note": str(len(rows) + 1)})
        arms = measured.get(shown) or ({"a": spec.a, "b": spec.b} if spec else {})
        if spec and r["n"] is not None:
            compared = f"{shown}: {arms['a']} against {arms['b']}, {spec.metric}, n = {r['n']} {spec.unit}"
        else:
            compared = shown or r["reason"]
        said = [f"**{len(rows)}. {r['claim']}**, {compared}."]
        said += [f"Caveat: {spec.caveat.rstrip('.')}."] if spec and spec.caveat else []
        said += [f"Upper bound: {plan.upper_bound(shown, named=run_names(arms))}."] if bounds else []
        said += [f"Declared before any result: {r['declared']}."] if r.get("declared") else []
        said += [f"{r['fragile'][0].upper()}{r['fragile'][1:]}."] if r.get("fragile") else []
        notes.append(" ".join(said))
    columns = ["claim", "what it says", "verdict", "difference [95 % CI]", "upper bound", "note"]
    return Decided(pd.DataFrame(rows, columns=columns).set_index("claim"), "\n\n".join(notes))


@dataclass
class TitleAnswer:
    """The book's answer to its title question on a seeded draw, as the front page's first paragraph
    glues it: each value a number, a verdict or a short label (the paragraph's words are its markdown)."""
    n_facts: str  # the test facts
    n_seeds: str  # the training seeds of each fine-tune arm (the plan's `seeds`)
    margin: str  # K1-reader-equivalent's margin, in points
    reader_arm: str  # the arm the development documents chose for the reader's fine-tune
    reader: str  # its held-out accuracy, the mean of its training seeds
    rag: str  # RAG's on the same questions
    difference: str  # RAG minus the reader's fine-tune, with its 95 % interval
    verdict: str  # K1-rag-vs-reader's verdict (adjusted in the family; "; fragile (training seed)" where seeds disagree)
    equivalence: str  # K1-reader-equivalent's: within its margin of RAG or not (marked so too)
    spread: str  # how far the reader's training seeds' own accuracies spread
    gold: str  # the gold-questions fine-tune, an upper bound no reader has
    reader_rag: str  # the reader's fine-tune with RAG
    # the reader's training seconds to its chosen checkpoint, its fastest seed: a CPU shared with other
    # work only ever adds seconds (d2's units beside a session's tests took up to three times as long)
    train_s: str
    train_tokens: str  # its training tokens to that checkpoint (the mean over seeds)
    fragile: str  # the primary comparisons whose training seeds disagree ("none")

    def glue_all(self, glue) -> None:
        for name, value in asdict(self).items():
            glue(f"answer_{name}", value)


NOT_RUN = "not measured"  # every value of the title answer where chapter 3 or 7 did not run


def title_answer(finetune: dict | None, verdict_doc: dict | None) -> TitleAnswer:
    """The title question answered from chapter 3's results (the reader's arm, its seeds' spread and
    training cost) and chapter 7's (every comparison adjusted in the family, with its seeds' verdicts):
    the fine-tune a reader could build against RAG, the gold-questions upper bound, the two together.
    Where either chapter did not run (None), every value reads NOT_RUN, as summary_sentence says."""
    if not finetune or not verdict_doc:
        return TitleAnswer(**{f.name: NOT_RUN for f in fields(TitleAnswer)})
    comparisons = {c["claim"]: c for c in verdict_doc["comparisons"]}
    missing = [k for k in ("K1-rag-vs-reader", "K1-reader-equivalent", "K1-rag-vs-dsf", "K6-reader-plus-rag")
               if k not in comparisons]
    if missing or "reader_arm" not in finetune.get("tables", {}):
        raise ValueError(f"the title answer needs a seeded draw's chapter 3 (its reader's arm) and chapter 7's "
                         f"comparisons of it ({', '.join(missing) or 'present'}; the reader's arm "
                         f"{'present' if 'reader_arm' in finetune.get('tables', {}) else 'missing'}): the pilot "
                         "measured no fine-tune a reader could build")
    m, arm = finetune["metrics"], finetune["tables"]["reader_arm"]
    vs, eq = comparisons["K1-rag-vs-reader"], comparisons["K1-reader-equivalent"]
    chosen = [r for r in finetune["tables"]["knowledge_curve"] if r["arm"] == ARM_LABELS[arm] and r["chosen"]]
    if not chosen:
        raise ValueError(f"chapter 3's knowledge curve marks no chosen checkpoint of the reader's arm {arm!r}")
    pct = "{:.0%}".format
    fragile = [c["claim"] for c in verdict_doc["comparisons"] if c.get("fragile") and c.get("role") == "primary"]
    return TitleAnswer(
        n_facts=str(m["n_facts"]), n_seeds=str(finetune["params"]["n_training_seeds"]),
        margin=f"{100 * the_plan().get('K1-reader-equivalent').margin:.0f} points",
        reader_arm=ARM_LABELS[arm], reader=pct(vs["mean_b"]), rag=pct(vs["mean_a"]),
        difference=difference_text(vs["diff"], vs["ci_low"], vs["ci_high"], RATE),  # accuracies: in points
        verdict=marked(vs), equivalence=marked(eq), spread=f"{100 * m['reader_seed_spread']:.0f} points",
        gold=pct(comparisons["K1-rag-vs-dsf"]["mean_b"]), reader_rag=pct(comparisons["K6-reader-plus-rag"]["mean_a"]),
        train_s=f"{min(r['seconds'] for r in chosen):,.0f}",
        train_tokens=f"{sum(r['train_tokens'] for r in chosen) / len(chosen):,.0f}",
        fragile=", ".join(fragile) or "none")
