"""The ledger: every claim of data/claims.yaml beside what the chapters of one run measured, with a
verdict that comes from their paired comparisons, never typed.

A claim's verdict, from the comparisons it lists that this run holds (a claim's comparisons are its
parts: a claim holds only when every part does):
- every one is decided (supported / contradicted) and they agree: that verdict, the first its evidence;
- decided ones disagree, or one itself depends (a cost figure that holds only at its source's
  unstated inputs): **depends** (the reason names on what);
- otherwise **inconclusive at this n**: none is decided, or some part is not yet (the reason says which
  parts are decided), with the most paired questions an undecided one would need;
- it lists none (`untested` in the claims file) or the run holds none of them: **not testable here**,
  with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .claims import Claim
from .stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED

DEPENDS = "depends"
NOT_TESTABLE = "not testable here"
VERDICTS = (SUPPORTED, CONTRADICTED, DEPENDS, INCONCLUSIVE, NOT_TESTABLE)
FEASIBLE_N = 100_000  # paired questions beyond which "it would need N" stops meaning anything


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
    kind: str = "binary"  # its score: binary (a difference of rates, in points), continuous, or computed
    measured: str | None = None  # a computed check's figure (a price rebuilt from measured tokens)

    def difference(self) -> str:
        """The measured difference with its interval, in points for rates, as numbers otherwise."""
        if self.n is None:
            return self.measured or "–"
        return difference_text(self.diff, self.ci_low, self.ci_high, self.kind)

    def as_dict(self) -> dict:
        return asdict(self)


def difference_text(diff: float, low: float, high: float, kind: str = "binary") -> str:
    """A paired difference with its 95 % interval: in points for rates, as numbers otherwise."""
    if kind == "binary":
        return f"{100 * diff:+.0f} points [{100 * low:+.0f}, {100 * high:+.0f}]"
    return f"{diff:+.3g} [{low:+.3g}, {high:+.3g}]"


def _evidence(c: dict) -> str:
    if c.get("kind") == "computed":  # a figure rebuilt by arithmetic: its note says from what
        return f"{c['claim']}: {c['verdict']}: {c['note']}"
    return f"{c['claim']} ({c['a']} vs {c['b']}): {c['verdict']} at n = {c['n']}"


def judge(claim: Claim, comparisons: dict[str, dict]) -> LedgerRow:
    """One claim's ledger row from the run's comparisons ({claim key: comparison dict})."""
    if claim.untested:
        return LedgerRow(claim.id, NOT_TESTABLE, claim.chapter, None, None, None, None, claim.untested)
    held = [comparisons[k] for k in claim.comparisons if k in comparisons]
    if not held:
        return LedgerRow(claim.id, NOT_TESTABLE, claim.chapter, None, None, None, None,
                         f"this run holds none of its comparisons ({', '.join(claim.comparisons)}): "
                         f"run chapter {claim.chapter} in the same run")
    decided = [c for c in held if c["verdict"] in (SUPPORTED, CONTRADICTED, DEPENDS)]
    undecided = [c for c in held if c not in decided]
    if len({c["verdict"] for c in decided}) > 1:
        verdict, shown = DEPENDS, next((c for c in decided if c["verdict"] == DEPENDS), decided[0])
    elif decided and not undecided:  # all agree: supported, contradicted, or all depend
        verdict, shown = decided[0]["verdict"], decided[0]
    else:  # a claim is only as decided as its least decided part
        verdict, shown = INCONCLUSIVE, max(undecided, key=lambda c: c["n"] or 0)
    reason = "; ".join(_evidence(c) for c in held)
    if verdict == INCONCLUSIVE and decided:
        reason = f"partly decided ({decided[0]['verdict']} in {len(decided)} of {len(held)} parts): {reason}"
    if verdict == INCONCLUSIVE:
        need = max((c.get("n_for_effect") or 0) for c in undecided)
        if need > FEASIBLE_N:
            reason += "; the observed difference is near zero: no feasible number of questions would detect it"
        elif need:
            reason += f"; about {need:,} paired questions would detect the observed difference"
        elif all(c.get("diff") == 0 for c in undecided):
            reason += "; no difference was observed, so no number of questions would detect one"
            if shown.get("kind", "binary") == "binary":  # what this n could have seen, in points
                reason += f" (this n detects about {100 * max(c.get('mde') or 0 for c in undecided):.0f} points)"
    return LedgerRow(claim.id, verdict, shown.get("chapter", claim.chapter), shown["n"], shown["diff"],
                     shown["ci_low"], shown["ci_high"], reason, shown["claim"], shown.get("kind", "binary"),
                     shown.get("computed"))


def ledger(claims: dict[str, Claim], chapter_results: dict[str, dict]) -> list[LedgerRow]:
    """Every claim's row, in the claims file's order, from one run's chapter results."""
    comparisons = {}
    for chapter, doc in chapter_results.items():
        for c in doc.get("comparisons", []):
            comparisons[c["claim"]] = {**c, "chapter": chapter}
    return [judge(c, comparisons) for c in claims.values()]


def counts(rows: list[LedgerRow]) -> dict[str, int]:
    """How many claims got each verdict (every verdict present, zeros included)."""
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS}


def summary_sentence(doc: dict | None) -> str:
    """One sentence of the verdict chapter's counts, for the front page (its results file, or None)."""
    if not doc:
        return "The verdict chapter did not run in this run, so no claim has a verdict on this page."
    m = doc["metrics"]
    return (f"Of the {m['n_claims']} claims this book tests, {m['n_supported']} are supported by this run's "
            f"measurements, {m['n_contradicted']} contradicted, {m['n_depends']} depend on the condition, "
            f"{m['n_inconclusive']} are inconclusive at the number of questions this run affords, and "
            f"{m['n_not_testable']} are not testable here (yet).")


def decided_table(doc: dict | None):
    """The decided claims of a verdict results file (supported, contradicted, depends), for reading."""
    import pandas as pd

    rows = [{"claim": r["claim"], "verdict": r["verdict"], "chapter": r["chapter"], "n": "–" if r["n"] is None else r["n"],
             "comparison": r["comparison"], "difference [95 % CI]": LedgerRow(**r).difference()}
            for r in (doc or {}).get("tables", {}).get("ledger", []) if r["verdict"] in (SUPPORTED, CONTRADICTED, DEPENDS)]
    columns = ["claim", "verdict", "chapter", "comparison", "n", "difference [95 % CI]"]
    return pd.DataFrame(rows, columns=columns).set_index("claim")
