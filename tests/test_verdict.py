"""The verdict rule: a claim's verdict comes from its comparisons, table-driven."""

import pytest

from ragft.claims import Claim
from ragft.stats import UNINFORMATIVE
from ragft.verdict import DEPENDS, NOT_AT_CPU, NOT_FIT, NOT_TESTABLE, VERDICTS, claim_row, counts, ledger

S, C, I = "supported", "contradicted", "not decided at this n"
DIRECTION = "direction supported, size not shown"
CEIL = UNINFORMATIVE["ceiling"]


def cmp(key, verdict, n=64, diff=0.2, need=0, **extra):
    return {"claim": key, "a": "x", "b": "y", "verdict": verdict, "n": n, "diff": diff, "p": 0.01,
            "ci_low": diff - 0.1, "ci_high": diff + 0.1, "n_needed": need, "role": "primary", "test": "paired", **extra}


CLAIM = Claim("K1", "words", ("heym2026",), "a figure", "03_finetune", ("K1-a", "K1-b"), scales="why")


@pytest.mark.parametrize("held,verdict,shown", [
    ([cmp("K1-a", S), cmp("K1-b", S)], S, "K1-a"),
    ([cmp("K1-a", I, n=100, need=300), cmp("K1-b", C)], I, "K1-a"),  # a part undecided: the claim is too
    ([cmp("K1-a", S), cmp("K1-b", C)], DEPENDS, "K1-a"),
    ([cmp("K1-a", I, n=16, need=90), cmp("K1-b", I, n=64, need=300)], I, "K1-b"),  # most questions shown
    ([cmp("K1-b", S)], S, "K1-b"),  # one of two comparisons in the run
    ([cmp("K1-a", S), cmp("K1-b", CEIL, bound="ceiling", sesoi=0.05)], CEIL, "K1-b"),  # a part at a bound
    ([cmp("K1-a", S), cmp("K1-b", NOT_FIT)], NOT_FIT, "K1-b"),
    ([cmp("K1-a", S), cmp("K1-b", C, role="secondary")], S, "K1-a"),  # a secondary part is shown, never decides
], ids=["agree", "one-undecided", "disagree", "none-decided", "partial", "bound", "unfit", "secondary"])
def test_a_claims_verdict_follows_its_comparisons(held, verdict, shown):
    row = claim_row(CLAIM, {c["claim"]: c for c in held})
    assert (row.verdict, row.comparison) == (verdict, shown)
    assert all(c["claim"] in row.reason for c in held)
    if verdict == I:
        assert "about 300 questions would detect the smallest effect of interest" in row.reason
        assert ("partly decided (contradicted in 1 of 2 parts)" in row.reason) == any(c["verdict"] != I for c in held)
    if verdict == CEIL:
        assert "of the ceiling" in row.reason and "partly decided (supported in 1 of 2 parts)" in row.reason


def test_the_adjustment_and_the_sizes_show_on_the_row():
    row = claim_row(CLAIM, {"K1-a": cmp("K1-a", I, verdict_raw=S, p_adjusted=0.2, size_vs_stated="larger")})
    assert row.changed_by_adjustment == ["K1-a: supported before the adjustment"]
    assert row.p_adjusted == 0.2 and row.size == "K1-a: larger than stated"


def test_untested_and_unrun_claims_are_not_testable_with_a_reason():
    untested = Claim("S3", "words", ("heym2026",), "$", "06_cost", (), "a price computation")
    assert claim_row(untested, {}).verdict == NOT_TESTABLE and claim_row(untested, {}).reason == "a price computation"
    row = claim_row(CLAIM, {"other": cmp("other", S)})
    assert row.verdict == NOT_TESTABLE and "run chapter 03_finetune" in row.reason and row.n is None
    # an untestable claim may show what a comparison measured beside it: never as its verdict
    shown = Claim("R3", "words", ("heym2026",), "$", "02_rag", ("R3-rerank",), "no corpus of 10,000 documents")
    row = claim_row(shown, {"R3-rerank": cmp("R3-rerank", S, role="secondary")})
    assert row.verdict == NOT_TESTABLE and row.n is None
    assert row.reason.startswith("no corpus of 10,000 documents (shown: R3-rerank") and S in row.reason


def test_a_claim_the_profile_leaves_to_others_is_not_testable_at_cpu_scale_with_the_plans_reason():
    away = {"K1-a": "measured in the gpu profile only: why", "K1-b": "measured in the gpu profile only: why"}
    row = claim_row(CLAIM, {}, away)
    assert row.verdict == NOT_AT_CPU and row.n is None and row.reason.startswith("K1-a: measured in the gpu profile only")
    # one part here, one elsewhere: the part here decides, and the reason names the other
    row = claim_row(CLAIM, {"K1-a": cmp("K1-a", S)}, {"K1-b": away["K1-b"]})
    assert row.verdict == S and "K1-b: measured in the gpu profile only: why" in row.reason
    assert claim_row(CLAIM, {}).verdict == NOT_TESTABLE  # absent without a declaration: not run, not "at cpu scale"


def test_ledger_judges_every_chapter_by_the_plan_and_counts_every_verdict():
    # K9-long-context: chapter 1's primary (K1-gold-document, at the floor and the ceiling by construction,
    # is secondary since draw d2's plan)
    claim = Claim("K9", "words", ("heym2026",), "a figure", "01_prompting", ("K9-long-context",), scales="why")
    doc = {"chapter": "01_prompting",
           "comparisons": [{"claim": "K9-long-context", "a": "haystack gold only", "b": "haystack 2500"}],
           "outcomes": {"haystack gold only": {f"q{i}": 1 for i in range(40)},
                        "haystack 2500": {f"q{i}": int(i < 15) for i in range(40)}}}  # 0.375: off the floor (0.25 + 0.10)
    rows = ledger({"K9": claim}, {"01_prompting": doc, "00_front": {}})
    assert [r.verdict for r in rows] == [S] and rows[0].p_adjusted == rows[0].p  # a family of one
    assert counts(rows) == {v: int(v == S) for v in VERDICTS}


def computed(key, verdict):
    """A figure rebuilt by arithmetic (chapter 6): no n, a note that says from what."""
    return {"claim": key, "a": "stated", "b": "rebuilt", "verdict": verdict, "n": None, "diff": None, "ci_low": None,
            "ci_high": None, "kind": "computed", "note": f"note of {key}", "computed": f"figure of {key}"}


@pytest.mark.parametrize("held,verdict,shown", [
    ([computed("K1-a", S), computed("K1-b", S)], S, "K1-a"),
    ([computed("K1-a", DEPENDS), computed("K1-b", S)], DEPENDS, "K1-a"),  # a part that depends: the claim does
    ([cmp("K1-a", S), computed("K1-b", DEPENDS)], DEPENDS, "K1-b"),
    ([computed("K1-a", DEPENDS), cmp("K1-b", I, need=200)], I, "K1-b"),  # still a part undecided
    ([computed("K1-a", DEPENDS)], DEPENDS, "K1-a"),
], ids=["computed-agree", "computed-depends", "paired-and-computed", "depends-and-undecided", "depends-alone"])
def test_computed_parts_carry_their_verdict_and_note(held, verdict, shown):
    row = claim_row(CLAIM, {c["claim"]: c for c in held})
    assert (row.verdict, row.comparison) == (verdict, shown)
    for c in held:
        if c.get("kind") == "computed":
            assert c["note"] in row.reason
    if row.n is None:
        assert row.difference() == f"figure of {shown}"


def test_the_verdict_chapter_alone_reads_the_published_results_and_says_so(tmp_path, monkeypatch, capsys):
    """A reader's papermill run of chapter 7 in a fresh folder (a Colab button gives a fresh machine):
    the ledger is the published one, labelled, not empty."""
    import json

    from conftest import ROOT
    from ragft import config
    from ragft.experiments import ch07_verdict as ch07

    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    v = ch07.setup(config.resolve("07_verdict", "cpu"))
    assert set(v.origin.values()) == {"published cpu results"} and set(v.origin) == set(ch07.EARLIER_CHAPTERS)
    assert "the ledger reads the published cpu results of chapters 01_prompting" in capsys.readouterr().out
    published = json.loads((ROOT / "experiments" / "results" / "cpu" / "07_verdict.json").read_text())["ledger"]
    assert [r.verdict for r in v.rows] == [r["verdict"] for r in published]


def test_a_row_resting_on_an_upper_bound_arm_says_which_and_what_it_was_given():
    # K1-rag-vs-dsf's fine-tune trained on gold questions about every test fact; K1-rag-vs-reader's did not
    claim = Claim("K1", "words", ("heym2026",), "a figure", "03_finetune", ("K1-rag-vs-dsf", "K1-rag-vs-reader"))
    # the arm by the name the run gave it (the plan's DSF p{count}, filled)
    row = claim_row(claim, {"K1-rag-vs-dsf": cmp("K1-rag-vs-dsf", S, a="base + RAG", b="DSF p3 held-out"),
                            "K1-rag-vs-reader": cmp("K1-rag-vs-reader", S)})
    assert row.upper_bound.startswith("K1-rag-vs-dsf: DSF p3 held-out: fine-tuned on gold question-answer pairs")
    assert "K1-rag-vs-reader" not in row.upper_bound
    assert claim_row(claim, {"K1-rag-vs-reader": cmp("K1-rag-vs-reader", S)}).upper_bound is None


@pytest.mark.parametrize("equivalence,difference,verdict,shown", [
    (S, I, C, "K1-eq"),  # within the margin of RAG: the claim (RAG wins) is contradicted, the difference test decides nothing
    (I, S, S, "K1-diff"),  # not shown equivalent: the difference test answers alone
    (I, I, I, "K1-diff"),
    (C, DIRECTION, DIRECTION, "K1-diff"),  # shown outside the margin: says nothing the difference test does not
], ids=["equivalent", "rag-wins", "neither", "outside-margin"])
def test_an_equivalence_listed_against_a_claim_answers_with_its_pair(equivalence, difference, verdict, shown):
    claim = Claim("K1", "RAG is the tool", ("heym2026",), "a figure", "03_finetune", ("K1-eq", "K1-diff", "K1-other"),
                  against=("K1-eq",))
    parts = [cmp("K1-eq", equivalence, a="RAG", b="reader", diff=0.02), cmp("K1-diff", difference, a="RAG", b="reader", diff=0.02)]
    other = cmp("K1-other", verdict if verdict != C else C, a="RAG", b="gold")  # another pair of arms, agreeing
    row = claim_row(claim, {c["claim"]: c for c in parts + [other]})
    assert (row.verdict, row.comparison) == (verdict, shown)
    assert "K1-eq" in row.reason and "K1-diff" in row.reason  # both shown, whichever decides
    assert ("equivalent within its margin, which contradicts the claim" in row.reason) == (equivalence == S)


def test_a_claim_lists_against_itself_only_its_own_comparisons(tmp_path):
    from ragft.claims import load_claims

    path = tmp_path / "claims.yaml"
    path.write_text("K1:\n  claim: c\n  sources: [s]\n  figure: f\n  chapter: 03_finetune\n  scales: s\n"
                    "  comparisons: [K1-a]\n  against: [K1-b]\n")
    with pytest.raises(ValueError, match="against names \\['K1-b'\\], not among its comparisons"):
        load_claims(path)


def test_the_front_pages_claims_are_one_line_each_with_numbered_notes():
    """The decided claims and the title question's (K1-K3) whatever their verdict; an undecided claim
    outside them is left out. Long texts (what was compared, the caveat, what an upper-bound arm was
    given) live in the notes, numbered as the rows."""
    from ragft.verdict import decided_table

    def row(claim, verdict, comparison, **extra):
        return {"claim": claim, "verdict": verdict, "chapter": "03_finetune", "n": 64, "diff": -0.125, "ci_low": -0.23,
                "ci_high": -0.06, "reason": "why", "comparison": comparison, "kind": "binary", **extra}

    doc = {"tables": {"ledger": [row("K1", CEIL, "K1-rag-vs-dsf"), row("K4", I, "K4-json"),
                                 row("K8", S, "K8-stale", fragile="fragile (training seed): K8-stale: seed 1 supported")]},
           "comparisons": [{"claim": "K1-rag-vs-dsf", "a": "base + RAG", "b": "DSF p3 held-out"}]}
    decided = decided_table(doc)
    assert list(decided.table.index) == ["K1", "K8"]
    assert list(decided.table.columns) == ["what it says", "verdict", "difference [95 % CI]", "upper bound", "note"]
    k1, k8 = decided.table.loc["K1"], decided.table.loc["K8"]
    assert (k1.verdict, k1["difference [95 % CI]"], k1["upper bound"], k1.note) == (CEIL, "-12 points [-23, -6]", "gold questions", "1")
    assert k8.verdict == "supported; fragile (training seed)" and k8.note == "2"
    first, second = decided.notes.split("\n\n")
    # the arms by the names the run gave them (DSF p3, not the plan's DSF p{count})
    assert first.startswith("**1. K1**, K1-rag-vs-dsf: base + RAG against DSF p3 held-out, gold value ranked first of 4, n = 64 questions.")
    assert "Caveat: " in first and "Upper bound: DSF p3 held-out: fine-tuned on gold question-answer pairs" in first
    assert second.startswith("**2. K8**, K8-stale: ") and second.endswith("Fragile (training seed): K8-stale: seed 1 supported.")


def test_a_row_shows_each_training_seeds_verdict_whether_they_agree_or_not():
    """The plan's `seeds.per_seed`: every seeded part's verdict on each seed alone beside the row; the
    fragile mark only where they disagree."""
    def seeds(*verdicts):
        return [{"seed": k, "verdict": v} for k, v in enumerate(verdicts, 1)]

    row = claim_row(CLAIM, {"K1-a": cmp("K1-a", S, seeds=seeds(S, S, S), fragile=False),
                            "K1-b": cmp("K1-b", S, seeds=seeds(S, I, S), fragile=True)})
    assert row.seeds == ("K1-a: seed 1 supported, seed 2 supported, seed 3 supported; "
                         "K1-b: seed 1 supported, seed 2 not decided at this n, seed 3 supported")
    assert row.fragile == "fragile (training seed): K1-b: seed 1 supported, seed 2 not decided at this n, seed 3 supported"
    row = claim_row(CLAIM, {"K1-a": cmp("K1-a", S)})  # no seeded arm: nothing to show
    assert (row.seeds, row.fragile) == (None, None)


def test_the_title_answer_reads_the_reader_arm_against_rag_from_chapters_3_and_7():
    from ragft.verdict import title_answer

    def c(key, mean_a, mean_b, verdict, **extra):
        return {"claim": key, "mean_a": mean_a, "mean_b": mean_b, "diff": mean_a - mean_b, "ci_low": -0.04,
                "ci_high": 0.08, "verdict": verdict, "role": "primary", **extra}

    verdict_doc = {"comparisons": [c("K1-rag-vs-reader", 0.875, 0.855, I, fragile=True), c("K1-reader-equivalent", 0.875, 0.855, S),
                                   c("K1-rag-vs-dsf", 0.875, 0.95, C, fragile=True), c("K6-reader-plus-rag", 0.9, 0.855, I)]}
    curve = [{"arm": "gold questions (upper bound)", "chosen": True, "seconds": 9.0, "train_tokens": 10},
             {"arm": "questions generated from the documents", "chosen": True, "seconds": 1000.0, "train_tokens": 100_000},
             {"arm": "questions generated from the documents", "chosen": True, "seconds": 1100.0, "train_tokens": 100_000},
             {"arm": "questions generated from the documents", "chosen": False, "seconds": 99.0, "train_tokens": 1}]
    finetune = {"metrics": {"n_facts": 104, "reader_seed_spread": 0.0385}, "params": {"n_training_seeds": 3},
                "tables": {"reader_arm": "generated", "knowledge_curve": curve}}
    answer = title_answer(finetune, verdict_doc)
    # RAG 0.875 against the reader's 0.855: +2 points, interval [-4, +8]; the faster chosen seed's 1,000 s
    assert (answer.reader, answer.rag, answer.difference) == ("86%", "88%", "+2 points [-4, +8]")
    # the verdict whose seeds disagree says so; the seeds and the margin are the run's and the plan's, not typed
    assert (answer.reader_arm, answer.verdict, answer.equivalence) == (
        "questions generated from the documents", f"{I}; fragile (training seed)", S)
    assert (answer.n_seeds, answer.margin) == ("3", "10 points")
    assert (answer.gold, answer.reader_rag, answer.spread) == ("95%", "90%", "4 points")
    assert (answer.train_s, answer.train_tokens, answer.fragile, answer.n_facts) == ("1,000", "100,000", "K1-rag-vs-reader, K1-rag-vs-dsf", "104")
    with pytest.raises(ValueError, match="the pilot measured no fine-tune a reader could build"):
        title_answer({"metrics": {}, "tables": {}}, {"comparisons": verdict_doc["comparisons"][2:]})
    # a front page run without chapter 3 or 7 says so in every value, as its summary sentence does
    for docs in [(None, verdict_doc), (finetune, None)]:
        assert set(vars(title_answer(*docs)).values()) == {"not measured"}


def test_a_seed_mean_of_right_wrong_outcomes_reads_in_points():
    """A seeded arm's outcome is the mean of its seeds' 0/1 outcomes: tested as continuous (sign-flip),
    read as a rate, in points, like a binary comparison; a continuous score stays a number."""
    from ragft.stats import RATE, score_kind
    from ragft.verdict import difference_text

    seeded = cmp("K1-a", S, diff=0.048, kind="continuous", seeds=[{"kind": "binary", "seed": k, "verdict": S} for k in (1, 2, 3)])
    assert score_kind(seeded) == RATE and score_kind(cmp("K1-a", S, kind="continuous")) == "continuous"
    assert score_kind(cmp("K1-a", S, kind="continuous", seeds=[{"kind": "continuous"}])) == "continuous"
    row = claim_row(CLAIM, {"K1-a": seeded})
    # 0.048 [-0.052, 0.148] -> +5 points [-5, +15]
    assert row.kind == RATE and row.difference() == "+5 points [-5, +15]"
    assert difference_text(0.048, -0.052, 0.148, "continuous") == "+0.048 [-0.052, +0.148]"


def test_the_family_table_shows_each_seeds_verdict_and_marks_a_fragile_one():
    """Chapter 7's table of the family: each seed's verdict beside a seeded comparison, the mark where
    they disagree; a comparison without seeds shows neither."""
    from types import SimpleNamespace

    from ragft.experiments.ch07_verdict import family_table

    seeded = cmp("K1-rag-vs-reader", S, p_adjusted=0.02, fragile=True,
                 seeds=[{"seed": 1, "verdict": S}, {"seed": 2, "verdict": I}, {"seed": 3, "verdict": S}])
    plain = cmp("R1-small-chunks", C, p_adjusted=0.01)
    table = family_table(SimpleNamespace(comparisons={c["claim"]: c for c in (seeded, plain)}))
    assert table.loc["K1-rag-vs-reader", "verdict"] == "supported; fragile (training seed)"
    assert table.loc["K1-rag-vs-reader", "each training seed"] == "seed 1 supported, seed 2 not decided at this n, seed 3 supported"
    assert tuple(table.loc["R1-small-chunks", ["verdict", "each training seed"]]) == (C, "–")


def test_the_ledger_table_marks_a_fragile_verdict_and_lists_each_seeds():
    """Chapter 7's ledger: the verdict column carries the fragile mark where a part's seeds disagree,
    and "each training seed" every seeded part's verdicts, agreeing or not."""
    from types import SimpleNamespace

    from ragft.experiments.ch07_verdict import ledger_table

    def seeds(*verdicts):
        return [{"seed": k, "verdict": v} for k, v in enumerate(verdicts, 1)]

    k2 = Claim("K2", "w", ("s",), "f", "03_finetune", ("K2-a",), scales="why")
    rows = [claim_row(CLAIM, {"K1-a": cmp("K1-a", S, seeds=seeds(S, I), fragile=True)}),
            claim_row(k2, {"K2-a": cmp("K2-a", S, seeds=seeds(S, S), fragile=False)})]
    table = ledger_table(SimpleNamespace(rows=rows, claims={"K1": CLAIM, "K2": k2}))
    assert table.loc["K1", "verdict"] == "supported; fragile (training seed)"
    assert table.loc["K1", "each training seed"] == "K1-a: seed 1 supported, seed 2 not decided at this n"
    assert (table.loc["K2", "verdict"], table.loc["K2", "each training seed"]) == (S, "K2-a: seed 1 supported, seed 2 supported")
