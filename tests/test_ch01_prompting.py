"""Chapter 1's experiment module without the language model: outcomes, metrics, comparisons, sanity,
figure. Conditions are built from planted answers (Generation objects), scored by the real metrics."""

from types import SimpleNamespace

import pytest

from ragft import config
from ragft.experiments import ch01_prompting as ch01
from ragft.experiments.common import split_outcomes
from ragft.generation import Generation
from ragft.results import METRIC_KINDS, ChapterRun

PUBLISHED_KEYS = [
    "closed_book_contains", "instruction_contains", "few_shot_best_contains", "few_shot_best_k",
    "gold_context_contains", "gold_context_em", "gold_context_f1", "multihop_gold_contains",
    "long_context_contains", "long_context_gold_only_contains", "long_context_prompt_tokens",
    "prompt_tokens_per_query_closed_book", "prompt_tokens_per_query_gold_context", "refusal_acc_instruction",
    "refusal_acc_gold_context", "cost_per_1k_gold_context_usd", "cost_per_1k_long_context_usd",
    "latency_gold_context_s", "latency_long_context_s"]


def gen(texts, prompt_tokens=100, completion_tokens=5):
    n = len(texts)
    return Generation(list(texts), [prompt_tokens] * n, [completion_tokens] * n, 0.1 * n, [0.1] * n)


def answers(items, right):
    """The gold answer for questions whose index is in `right`, a wrong one for the others;
    unanswerable questions are refused when their index is in `right`."""
    out = []
    for i, q in enumerate(items):
        if q.kind == "unanswerable":
            out.append("I don't know." if i in right else "It is blue.")
        else:
            out.append(f"It is {q.answer}." if i in right else "zzz")
    return out


@pytest.fixture()
def chapter(kb):
    params = config.resolve("01_prompting", "smoke")
    return ch01.Chapter(params, ChapterRun("01_prompting", params), SimpleNamespace(name="fake", context_window=2048),
                        kb, kb.sample("single", 8, 0), kb.sample("multihop", 2, 0), kb.sample("unanswerable", 4, 0))


def fill(ch, gold_right=range(100), haystack_right=((0, 1, 2), (0,))):
    """Every condition of the chapter, with planted answers: closed book always wrong and never
    refusing, the instruction refusing every unanswerable question, the gold document right on
    `gold_right`, the haystacks right on the given indices."""
    test = ch.test
    ch01.add_condition(ch, "closed book", "test", test, gen(answers(test, set()), 30))
    ch01.add_condition(ch, "instruction", "test", test,
                       gen(answers(test, {i for i, q in enumerate(test) if q.kind == "unanswerable"}), 70))
    items = ch.few_shot_items
    ch01.add_condition(ch, "few-shot k=0", "few-shot", items,
                       ch.conditions["instruction"].generation.subset([test.index(q) for q in items]), k=0)
    ch01.add_condition(ch, "few-shot k=1", "few-shot", items, gen(answers(items, {0}), 110), k=1)
    ch01.add_condition(ch, "gold document", "test", test, gen(answers(test, set(gold_right)), 220))
    ch01.add_condition(ch, "gold documents, two-hop", "test", ch.multihop, gen(answers(ch.multihop, {0}), 330))
    ch.long_context_questions = ch.single[:3]
    for name, right, tokens in zip(("haystack gold only", "haystack 600"), haystack_right, (400, 650)):
        ch01.add_condition(ch, name, "long context", ch.long_context_questions,
                           gen(answers(ch.long_context_questions, set(right)), tokens), documents=2)


def test_outcomes_keep_answers_and_refusals_apart(kb):
    single, unanswerable = kb.sample("single", 2, 0), kb.sample("unanswerable", 2, 0)
    items = single + unanswerable
    parts = split_outcomes(items, gen(answers(items, {0, 2}), prompt_tokens=40, completion_tokens=3))
    assert parts["answer"][0] == {single[0].qid: 1.0, single[1].qid: 0.0}
    assert parts["refusal"][0] == {unanswerable[0].qid: 1.0, unanswerable[1].qid: 0.0}
    assert parts["answer"][1][single[0].qid] == (40, 3)
    assert "refusal" not in split_outcomes(single, gen(answers(single, set())))


def test_outcomes_refuse_mismatched_or_repeated_questions(kb):
    single = kb.sample("single", 2, 0)
    with pytest.raises(ValueError, match="pair up"):
        split_outcomes(single, gen(["a"]))
    with pytest.raises(ValueError, match="asked twice"):
        split_outcomes(single[:1] * 2, gen(["a", "b"]))


def test_conditions_are_recorded_by_meaning_and_agree_with_the_table(chapter):
    fill(chapter)
    outcomes = chapter.run.outcomes
    assert {"instruction", "instruction refusal", "closed book refusal", "few-shot k=1", "haystack 600"} <= set(outcomes)
    assert "haystack 600 refusal" not in outcomes  # the haystacks ask answerable questions only
    for cond in chapter.conditions.values():
        scores = outcomes[cond.name]
        assert sum(scores.values()) / len(scores) == pytest.approx(cond.row["contains"])
        assert set(chapter.run.outcome_tokens[cond.name]) == set(scores)
    refusals = outcomes["instruction refusal"]
    assert sum(refusals.values()) / len(refusals) == pytest.approx(chapter.conditions["instruction"].row["refusal_acc"])
    with pytest.raises(ValueError, match="already measured"):
        ch01.add_condition(chapter, "instruction", "test", chapter.test, gen(answers(chapter.test, set())))
    with pytest.raises(ValueError, match="group"):
        ch01.add_condition(chapter, "other", "closed", chapter.test, gen(answers(chapter.test, set())))


def test_headline_metrics_keep_the_published_keys_with_declared_kinds(chapter):
    fill(chapter)
    m = ch01.headline_metrics(chapter)
    assert set(PUBLISHED_KEYS) <= set(m)
    rules = chapter.run.metric_rules
    assert set(rules) == set(m) and all(r["kind"] in METRIC_KINDS for r in rules.values())
    assert rules["closed_book_contains"] == {"kind": "rate", "n": 8}
    assert rules["refusal_acc_instruction"] == {"kind": "rate", "n": 4}
    assert rules["few_shot_best_k"]["kind"] == "choice" and rules["latency_long_context_s"]["kind"] == "machine"
    assert rules["cost_per_1k_gold_context_usd"]["kind"] == "exact"  # s4_actian prices input tokens only
    assert m["few_shot_best_k"] == 1 and m["gold_context_contains"] == 1.0 and m["refusal_acc_instruction"] == 1.0
    assert m["long_context_gold_only_contains"] == 1.0 and m["long_context_contains"] == pytest.approx(1 / 3)
    assert m["long_context_prompt_tokens"] == 650 and m["closed_book_n"] == 8 and m["unanswerable_n"] == 4


def test_best_few_shot_keeps_the_first_of_ties_and_can_leave_out_k0(chapter):
    fill(chapter)
    chapter.conditions["few-shot k=1"].row["contains"] = 0.0  # all tied at zero
    assert ch01.best_few_shot(chapter).name == "few-shot k=0"
    assert ch01.best_few_shot(chapter, with_examples=True).name == "few-shot k=1"


def test_comparisons_state_the_chapter_claims(chapter):
    fill(chapter)
    stated = ch01.state_comparisons(chapter)
    by_claim = {c["claim"]: c for c in chapter.run.comparisons}
    assert set(by_claim) == {"K9-long-context", "K1-gold-document", "prompting-few-shot", "refusal-instruction"}
    assert (by_claim["K9-long-context"]["a"], by_claim["K9-long-context"]["b"]) == ("haystack gold only", "haystack 600")
    assert by_claim["K1-gold-document"]["n"] == 8 and by_claim["K1-gold-document"]["verdict"] == "supported"
    assert by_claim["K9-long-context"]["verdict"] == "inconclusive at this n"  # 2 questions of 3
    assert by_claim["prompting-few-shot"]["b"] == "few-shot k=0"
    assert (by_claim["refusal-instruction"]["a"], by_claim["refusal-instruction"]["b"]) == (
        "instruction refusal", "closed book refusal")
    assert all(s.comparison is not None for s in stated.values())
    assert stated["k1_gold_document"].comparison.sentence("gold document", "instruction prompt").startswith("supported:")


def test_comparisons_say_what_was_not_measured(chapter):
    chapter.unanswerable = []
    fill(chapter)
    del chapter.conditions["haystack 600"]
    stated = ch01.state_comparisons(chapter)
    assert stated["k9_long_context"].comparison is None and "window" in stated["k9_long_context"].missing
    assert stated["refusal_instruction"].comparison is None
    assert "refusal_acc_instruction" not in ch01.headline_metrics(chapter)


def test_sanity_properties_hold_only_when_all_do(chapter):
    fill(chapter)
    planted = ch01.headline_metrics(chapter)
    assert ch01.sanity_properties(planted)["holds"].tolist() == [True, False, True]  # k=1 finds 1 of 3
    m = {**planted, "few_shot_best_contains": 0.0}
    table = ch01.sanity_properties(m)
    assert table["holds"].tolist() == [True, True, True] and ch01.sanity_wording(table) == "hold"
    low_gold = ch01.sanity_properties({**m, "gold_context_contains": ch01.SANITY_GOLD_DOCUMENT_MIN - 0.01})
    assert low_gold["holds"].tolist() == [True, True, False] and ch01.sanity_wording(low_gold) == "do NOT all hold"


def test_haystack_levels_leave_room_in_the_window():
    params = SimpleNamespace(long_context_tokens=[600, 1800, 1900])
    assert ch01.haystack_levels(params, 2048) == [0, 600, 1800]


def test_figure_has_error_bars_for_every_condition(chapter):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fill(chapter)
    fig = ch01.plot_accuracy_vs_tokens(chapter)
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # test conditions, few-shot, haystacks: each an errorbar container
    assert sum(len(c.lines[0].get_xdata()) for c in ax.containers) == len(chapter.conditions)
    plt.close(fig)
