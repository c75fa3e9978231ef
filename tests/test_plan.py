"""The analysis plan and its engine: every comparison declared before it is computed, one family
adjusted by Holm, and the published results judged by it."""

import json
import re

import pytest
import yaml

from conftest import ROOT
from ragft import plan, stats
from ragft.constants import DRAWS_DIR

PUBLISHED = ROOT / "experiments" / "results" / "cpu"
EXPERIMENTS = ROOT / "src" / "ragft" / "experiments"


def published() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(PUBLISHED.glob("0*.json"))}


def test_the_plan_loads_and_every_primary_comparison_tests_a_claim():
    p = plan.load_plan()
    assert len(p.primary) >= 30 and p.alpha == 0.05
    for cid in p.primary:
        assert p.comparisons[cid].claim and cid.startswith(p.comparisons[cid].claim + "-")
    # K7 is declared as the claim says: each fine-tune's loss against the base model's
    for method in ("lora", "qlora", "full"):
        k7 = p.get(f"K7-forgetting-{method}")
        assert k7.b == "NLL: base model" and k7.role == "primary"
    assert p.get("K7-full-vs-lora").role == "secondary"
    assert p.get("T2-merged-latency").test == "check" and p.get("U2-seconds").test == "welch-log"


def test_every_comparison_the_chapters_label_is_declared_for_them():
    """Read from the code, so a mistyped id fails here, not after a publication: every comparison id a
    chapter gives labels to is one the plan declares for that chapter, and no chapter judges one on its
    own (ragft.results.state_comparisons judges them all, through plan.judge_chapter)."""
    p = plan.load_plan()
    # a draw declared ahead of its publication (data/draws/<name>) may declare comparisons of its own
    chapters = {c: s.chapter for c, s in p.comparisons.items()}
    for drawn in DRAWS_DIR.glob("*/analysis_plan.yaml"):
        chapters.update({c: e["chapter"] for c, e in yaml.safe_load(drawn.read_text())["comparisons"].items()})
    named = {}
    for path in EXPERIMENTS.glob("ch0*.py"):
        text = path.read_text()
        assert ".compare(" not in text and "judge(" not in text.replace("judge_chapter(", ""), path.name
        named[path.stem[2:4]] = set(re.findall(r'"([A-Za-z0-9]+-[A-Za-z0-9-]+)": \(', text))
    assert sum(map(len, named.values())) >= 40
    for prefix, ids in named.items():
        # a claim's id (K1-..., U-replay) or any id the plan declares; other keys ("fine-tune") are not comparisons
        ids = {c for c in ids if re.match(r"[A-Z][A-Z0-9]*-", c) or c in chapters}
        wrong = [c for c in ids if c not in chapters or not chapters[c].startswith(prefix)]
        assert not wrong, f"chapter {prefix} labels comparisons the plan does not declare for it: {wrong}"


def test_an_undeclared_comparison_or_condition_is_refused_before_any_test():
    outcomes = {"gold document": {"q1": 1, "q2": 1}, "instruction": {"q1": 0, "q2": 1}, "planted": {"q1": 0, "q2": 1}}
    with pytest.raises(KeyError, match="not declared"):
        plan.judge("K1-planted", outcomes)
    with pytest.raises(ValueError, match="not the plan's"):
        plan.judge("K1-gold-document", outcomes, "gold document", "planted")
    # a placeholder takes a value the run chose, never an unrelated name
    spec = plan.load_plan().get("R1-small-chunks")
    assert plan.condition_matches(spec.a, "SQuAD dense 256-token hit within 512 tokens")
    assert not plan.condition_matches(spec.a, "SQuAD dense 256-token hit@3")
    assert not plan.condition_matches(spec.a, "SQuAD dense 64-token hit within 512 tokens")
    assert plan.judge("K1-gold-document", outcomes).n == 2


def _planted_plan(tmp_path, **change):
    raw = yaml.safe_load(plan.PLAN_FILE.read_text())
    entry = dict(raw["comparisons"]["K1-gold-document"])
    entry.update(change)
    raw["comparisons"]["K1-gold-document"] = entry
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change, message", [
    ({"test": "t-test"}, "test"), ({"role": "primary", "sesoi_from": "taste"}, "sesoi_from"),
    ({"expect": "equal"}, "margin"), ({"floor": 1.0}, "floor"), ({"n": 0}, "n must"), ({"extra": 1}, "unknown"),
    ({"profiles": ["tpu"], "note": "why"}, "profiles"), ({"profiles": ["gpu"], "note": ""}, "with a note"),
])
def test_a_bad_plan_entry_is_refused_with_its_name(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        plan.load_plan(_planted_plan(tmp_path, **change))


def test_a_primary_comparison_must_test_a_claim(tmp_path):
    raw = yaml.safe_load(plan.PLAN_FILE.read_text())
    raw["comparisons"]["planted-thing"] = {**raw["comparisons"]["K1-gold-document"], "role": "primary"}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="tests a claim"):
        plan.load_plan(path)


def _comparison(cid, p, diff=0.2, role="primary", bound=None):
    return {"claim": cid, "a": "a", "b": "b", "n": 64, "diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1,
            "p": p, "verdict": stats.SUPPORTED if p < 0.05 else stats.NOT_DECIDED, "expect": "greater",
            "margin": 0.0, "role": role, "test": "paired", "bound": bound, "kind": "binary"}


def test_a_difference_that_survives_only_unadjusted_is_not_decided_and_flagged():
    family = [_comparison("K1-a", 0.001), _comparison("K2-a", 0.03), _comparison("K3-a", 0.5),
              _comparison("prompting-x", 0.03, role="secondary")]
    out = {c["claim"]: c for c in plan.adjust(family)}
    # Holm over the 3 primary ones: 0.001 * 3, then 0.03 * 2, then 0.5 * 1
    assert out["K1-a"]["p_adjusted"] == pytest.approx(0.003) and out["K1-a"]["verdict"] == stats.SUPPORTED
    assert out["K2-a"]["p_adjusted"] == pytest.approx(0.06) and out["K2-a"]["verdict"] == stats.NOT_DECIDED
    assert out["K2-a"]["verdict_raw"] == stats.SUPPORTED and out["K1-a"]["verdict_raw"] is None
    assert "p_adjusted" not in out["prompting-x"] and out["prompting-x"]["verdict"] == stats.SUPPORTED
    bounded = plan.adjust([_comparison("K1-a", 0.001, bound="ceiling")])[0]
    assert bounded["verdict"] == stats.UNINFORMATIVE["ceiling"]


def test_rejudging_a_results_file_keeps_its_outcomes_and_recomputes_its_comparisons():
    doc = {"chapter": "01_prompting", "outcomes": {"gold document": {"q1": 1, "q2": 1, "q3": 1},
                                                   "instruction": {"q1": 0, "q2": 1, "q3": 0}},
           "comparisons": [{"claim": "K1-gold-document", "a": "gold document", "b": "instruction", "kind": "binary"}]}
    (c,) = plan.rejudge(doc)
    assert c["claim"] == "K1-gold-document" and c["n"] == 3 and c["p"] == pytest.approx(0.5)  # 2 discordant: 2/4


def test_every_published_comparison_is_declared_and_every_primary_one_is_published():
    p = plan.load_plan()
    seen = set()
    for chapter, doc in published().items():
        for c in doc.get("comparisons") or []:
            if c.get("kind") == "computed":
                assert c["claim"] in p.computed, c["claim"]
                continue
            assert c["claim"] in p.comparisons, f"{chapter}: {c['claim']} is not in the plan"
            if chapter != "07_verdict":
                assert p.comparisons[c["claim"]].chapter == chapter
            seen.add(c["claim"])
    # every primary comparison is published, but those the plan leaves to other profiles than cpu
    assert not sorted(set(p.primary) - seen - set(p.not_measured("cpu"))), "primary comparisons the published results do not hold"
    assert not seen & set(p.not_measured("cpu")), "the published cpu results hold a comparison the plan keeps from cpu"


def test_a_comparison_is_measured_in_the_profiles_the_plan_names():
    p = plan.load_plan()
    away = p.not_measured("cpu")
    assert {"F2-best-p", "F6-fewer-chunks", "F3-pubmedqa", "F3-hotpotqa"} <= set(away) and not p.not_measured("gpu")
    assert p.measured_in("F3-raft-vs-base-rag", "cpu") and not p.measured_in("F2-best-p", "cpu")
    assert p.measured_in("F2-best-p", "smoke") and away["F2-best-p"].startswith("measured in the smoke and gpu profiles only: ")


def test_no_published_raw_interval_contradicts_its_raw_p():
    checked = 0
    for chapter, doc in published().items():
        for c in doc.get("comparisons") or []:
            if c.get("kind") == "computed" or c.get("test") == "check":
                continue
            if c["expect"] == "equal":  # the 90 % interval inside the margin exactly when the TOST p < alpha
                inside = -c["margin"] <= c["ci_low"] and c["ci_high"] <= c["margin"]
                assert inside == (abs(c["diff"]) <= c["margin"] and c["p"] < 0.05), (chapter, c["claim"])
            elif c.get("kind") == "binary":  # exact McNemar p beside Tango's score interval: the exact test is the
                # more conservative, so where it rejects the interval excludes zero; not always the other way
                # round (5 : 0 discordant pairs: p = 0.0625, the interval clear of zero)
                assert c["p"] >= 0.05 or not c["ci_low"] <= 0 <= c["ci_high"], (chapter, c["claim"], c["ci_low"], c["ci_high"], c["p"])
                assert c["ci_high"] > c["ci_low"], (chapter, c["claim"])  # never collapses to a point
            else:  # the interval the sign-flip or Welch test inverts
                assert (c["ci_low"] <= 0 <= c["ci_high"]) == (c["p"] >= 0.05), (chapter, c["claim"], c["ci_low"], c["ci_high"], c["p"])
            for key in ("bound", "p_adjusted", "size_vs_stated"):
                assert key in c, (chapter, c["claim"], key)
            checked += 1
    assert checked >= 40


def test_the_published_family_is_adjusted_and_judged_by_this_plan():
    """Chapter 7's results hold the family as this plan and the published outcomes give it."""
    from ragft.verdict import family

    docs = published()
    verdict = {c["claim"]: c for c in docs.pop("07_verdict")["comparisons"]}
    docs.pop("00_front", None)
    now = family(docs)
    assert set(now) == set(verdict)
    for cid, c in now.items():
        assert verdict[cid]["verdict"] == c["verdict"], cid
        if c.get("p_adjusted") is not None:
            assert verdict[cid]["p_adjusted"] == pytest.approx(c["p_adjusted"]), cid
    # an arm given what no reader has carries the plan's caveat beside its comparison; a base-model arm none
    # (the arm as the run named it: DSF p<count>, the plan's placeholder filled)
    assert re.match(r"DSF p\d+ held-out: fine-tuned on gold question-answer pairs", now["K1-rag-vs-dsf"]["upper_bound"])
    assert "upper_bound" not in now["R1-small-chunks"]


def test_claims_and_plan_agree(tmp_path):
    """A claim that lists an undeclared comparison, or a primary comparison no claim lists, is refused."""
    from ragft.claims import load_claims

    claims = load_claims()
    claims["K1"] = claims["K1"].__class__(**{**claims["K1"].__dict__, "comparisons": ("K1-planted",)})
    with pytest.raises(ValueError, match="K1-planted"):
        plan.load_plan(claims=claims)
    claims = load_claims()
    claims["K9"] = claims["K9"].__class__(**{**claims["K9"].__dict__, "comparisons": ("K9-top-k",)})
    with pytest.raises(ValueError, match="K9-long-context"):
        plan.load_plan(claims=claims)  # declared primary, but its claim no longer lists it


def test_an_arm_that_missed_its_fitness_decides_nothing():
    """K1's fine-tune did not meet the checkpoint rule on its development facts: whatever p says, the
    comparison is not decided, and the ledger says which rule it missed; met or unknown, the test decides."""
    c = _comparison("K1-rag-vs-dsf", 0.0001)
    (low,) = plan.adjust([c], metrics={"03_finetune": {"dsf_fitness_reached": 0}})
    assert low["verdict"] == stats.NOT_FIT and low["unfit"] == ["dsf: dsf_fitness_reached 0.00 < 1.00"]
    (fit,) = plan.adjust([c], metrics={"03_finetune": {"dsf_fitness_reached": 1}})
    assert fit["verdict"] == stats.SUPPORTED and fit["unfit"] == []
    (unknown,) = plan.adjust([c], metrics={})
    assert unknown["verdict"] == stats.SUPPORTED and unknown["unfit"] is None
    # RAFT against DSF + RAG needs both readers fit: a RAFT that has not learned RAFT decides nothing
    both = _comparison("F3-raft-vs-dsf-rag", 0.0001)
    (raft_unfit,) = plan.adjust([both], metrics={"03_finetune": {"dsf_fitness_reached": 1},
                                                 "04_raft": {"raft_dev_fitness": 0}})
    assert raft_unfit["verdict"] == stats.NOT_FIT and raft_unfit["unfit"] == ["raft: raft_dev_fitness 0.00 < 1.00"]


def test_the_checkpoint_rule_is_checked_with_the_plan(tmp_path):
    import yaml

    raw = yaml.safe_load(plan.PLAN_FILE.read_text())
    assert raw["fitness"]["dsf"]["checkpoint"] == {"dev_trained_min": 0.95, "heldout_slack": 1}
    raw["fitness"]["dsf"]["checkpoint"] = {"dev_trained_min": 0.95}
    bad = tmp_path / "plan.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="checkpoint takes dev_trained_min and heldout_slack"):
        plan.load_plan(bad)

def test_a_chapters_comparisons_fill_the_plans_placeholders_from_the_runs_choices():
    """plan.judge_chapter: prompting-few-shot compares "few-shot k={k}" with k=0 (and K9-long-context
    names {tokens}); the run's choices name them. Without it the call says which choice is missing; with it, a condition not recorded is
    said to be not asked. Four questions, k=3 right on all, k=0 on two: a difference of 0.5."""
    from ragft.plan import judge_chapter

    outcomes = {"few-shot k=3": dict.fromkeys("abcd", 1.0), "few-shot k=0": {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}}
    with pytest.raises(KeyError, match=r"\{k\}"):
        judge_chapter("01_prompting", outcomes, {"tokens": 2500})  # K9-long-context's "haystack {tokens}"
    out = judge_chapter("01_prompting", outcomes, {"k": 3, "tokens": 2500}, profile="cpu")
    assert out["prompting-few-shot"].a == "few-shot k=3" and out["prompting-few-shot"].diff == 0.5
    assert all(isinstance(v, str) and v.endswith("was not asked in this run") for k, v in out.items() if k != "prompting-few-shot")


def test_a_chapters_own_reason_names_an_arm_its_parameters_leave_out():
    """plan.judge_chapter(unmeasured=...): the chapter's reason stands for a comparison its parameters
    leave without an arm, before any placeholder is filled (no k to give), behind the profile's
    (F4-cot runs in smoke and gpu only); an id the plan does not give the chapter fails."""
    from ragft.plan import judge_chapter, the_plan

    out = judge_chapter("01_prompting", {}, {"tokens": 2500}, unmeasured={"prompting-few-shot": "few_shot_ks has no k > 0"})
    assert out["prompting-few-shot"] == "few_shot_ks has no k > 0"
    out = judge_chapter("04_raft", {}, {}, profile="cpu", unmeasured={"F4-cot": "no arm"})
    assert out["F4-cot"] == the_plan().elsewhere("F4-cot")
    with pytest.raises(KeyError, match="K3-rag-vs-ft"):
        judge_chapter("01_prompting", {}, {"k": 3, "tokens": 2500}, unmeasured={"K3-rag-vs-ft": "elsewhere"})


def test_a_comparisons_own_choices_come_before_the_chapters():
    """T4-sizes and K5-paraphrases both name {fewer} (10 examples; 1 paraphrase): the comparison's own
    value, under its id, is the one its condition gets."""
    from ragft.plan import judge_chapter

    outcomes = {"LoRA on 50 examples, short instruction: schema": {"a": 1.0, "b": 1.0},
                "LoRA on 10 examples, short instruction: schema": {"a": 1.0, "b": 0.0}, "DSF p3 e3 held-out": {"a": 1.0}}
    out = judge_chapter("03_finetune", outcomes, {"count": 3, "fewer": 1, "exposures": 3, "examples": 10,
                                                  "T4-sizes": {"more": 50, "fewer": 10}})
    assert out["T4-sizes"].b == "LoRA on 10 examples, short instruction: schema" and out["T4-sizes"].diff == 0.5
    assert out["K5-paraphrases"] == "DSF p1 e3 held-out was not asked in this run"


def test_an_arm_given_what_no_reader_has_is_named_an_upper_bound(tmp_path):
    p = plan.load_plan()
    # chapter 3's gold-questions fine-tune and its copies in chapters 4 and 5, and the gold document
    assert "gold question-answer pairs" in p.upper_bound("K1-rag-vs-dsf")
    assert p.upper_bound("K6-ladder", short=True) == "DSF + RAG and DSF closed: gold questions"
    assert p.upper_bound("U1-rag-vs-dsf", short=True) == "DSF, v2: changed: gold questions"
    assert p.upper_bound("K1-gold-document", short=True) == "gold document: gold document"
    # RAFT trained on gold question-answer pairs (about other facts) is one too: a reader has documents
    assert "gold question-answer pairs" in p.upper_bound("F3-raft-vs-base-rag")
    # what a reader can build is no upper bound: RAG, the fine-tune on the documents alone, RAFT on the
    # questions a rule writes from the documents, the reader's own case
    for cid in ("K1-rag-vs-reader", "R2-top-k", "F3-reader-raft-vs-base-rag", "Y-rag-vs-dsf"):
        assert p.upper_bound(cid) is None, cid
    raw = yaml.safe_load(plan.PLAN_FILE.read_text())
    raw["upper_bounds"]["broken"] = {"arms": "^DSF"}  # a string, and no `given`
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="upper_bounds broken"):
        plan.load_plan(path)


def _seeded_outcomes(seed_rows: list[list[int]], other: list[int]) -> dict:
    """A seeded arm's outcomes per seed ("B (seed k)") and their mean ("B"), beside an arm without seeds."""
    ids = [f"q{i}" for i in range(len(other))]
    out = {"A": dict(zip(ids, other))}
    for k, row in enumerate(seed_rows, 1):
        out[f"B (seed {k})"] = dict(zip(ids, row))
    out["B"] = {q: sum(r[i] for r in seed_rows) / len(seed_rows) for i, q in enumerate(ids)}
    return out


def test_a_seeded_arm_is_judged_on_its_mean_and_each_seed_beside_it():
    # 20 questions; A right on all; seeds of B right on 0, 10 and 20 of them: the mean (0.5) is tested by
    # the sign-flip test (continuous), each seed alone by exact McNemar (its 0/1 outcomes)
    spec = plan.Planned("K1-x", "K1", "03_finetune", "A", "B", "m", "questions", "paired", "continuous", "greater",
                        0.10, 0.0, 20, 0.0, 1.0, "primary")
    p = plan.load_plan()
    outcomes = _seeded_outcomes([[0] * 20, [1] * 10 + [0] * 10, [1] * 20], [1] * 20)
    seeds = plan.judge_seeds(spec, "A", "B", outcomes, p)
    assert [s["seed"] for s in seeds] == [1, 2, 3]
    assert [s["b"] for s in seeds] == ["B (seed 1)", "B (seed 2)", "B (seed 3)"] and {s["a"] for s in seeds} == {"A"}
    assert [s["kind"] for s in seeds] == ["binary"] * 3
    assert [round(s["diff"], 2) for s in seeds] == [1.0, 0.5, 0.0]
    # seed 1: 20 discordant pairs all one way: McNemar p = 2 * 0.5**20; seed 3: none discordant, p = 1
    assert seeds[0]["p"] == pytest.approx(2 * 0.5 ** 20) and seeds[2]["p"] == 1.0
    assert plan.judge_seeds(spec, "A", "A", outcomes, p) is None  # no seeded arm: nothing per seed


def test_seed_verdicts_take_the_holm_factor_of_their_comparison_and_mark_disagreement_fragile():
    # a family of two primaries: the smaller p gets Holm's factor 2, the larger 1; a seed's p is
    # multiplied by its comparison's factor (seed p 0.03 * 2 = 0.06: not decided at 0.05)
    base = {"role": "primary", "test": "paired", "expect": "greater", "kind": "binary", "margin": 0.0, "sesoi": 0.1,
            "bound": None, "ci_low": 0.2, "ci_high": 0.6, "diff": 0.4}
    first = {**base, "claim": "K1-rag-vs-dsf", "p": 0.001,
             "seeds": [{**base, "seed": 1, "p": 0.001}, {**base, "seed": 2, "p": 0.03}]}
    second = {**base, "claim": "K1-gold-document", "p": 0.01, "seeds": [{**base, "seed": 1, "p": 0.01}]}
    p = plan.load_plan()
    out = {c["claim"]: c for c in plan.seed_verdicts([first, second], p)}
    assert [s["p_adjusted"] for s in out["K1-rag-vs-dsf"]["seeds"]] == pytest.approx([0.002, 0.06])
    assert [s["verdict"] for s in out["K1-rag-vs-dsf"]["seeds"]] == [stats.SUPPORTED, stats.NOT_DECIDED]
    assert out["K1-rag-vs-dsf"]["fragile"] is True
    assert out["K1-gold-document"]["seeds"][0]["p_adjusted"] == pytest.approx(0.01) and out["K1-gold-document"]["fragile"] is False
