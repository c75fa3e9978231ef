"""Chapter 1's experiment module without the language model: rankings, outcomes, metrics,
comparisons, refusal as a detector, sanity, figure. Conditions are built from planted log-likelihood
rankings (ragft.scoring.Ranking) and planted answers (Generation objects), scored by the real code."""

from types import SimpleNamespace

import pytest

from ragft import config, plots, prompts
from ragft.experiments import ch01_prompting as ch01
from ragft.experiments.common import split_outcomes
from ragft.generation import Generation
from ragft.results import METRIC_KINDS, Clock, judged_of
from ragft.scoring import Ranking

PUBLISHED_KEYS = [
    "closed_book_contains", "instruction_contains", "few_shot_best_contains", "few_shot_best_k",
    "gold_context_contains", "gold_context_em", "gold_context_f1", "multihop_gold_contains",
    "long_context_contains", "long_context_gold_only_contains", "long_context_prompt_tokens",
    "prompt_tokens_per_query_closed_book", "prompt_tokens_per_query_gold_context", "refusal_acc_instruction",
    "refusal_acc_gold_context", "cost_per_1k_gold_context_usd", "cost_per_1k_long_context_usd",
    "latency_gold_context_s", "latency_long_context_s", "closed_book_n", "instruction_n", "few_shot_n",
    "gold_context_n", "multihop_gold_n", "long_context_n", "unanswerable_n"]
LL_KEYS = ["ll_chance", "closed_book_ll_acc", "instruction_ll_acc", "few_shot_best_ll_acc", "gold_context_ll_acc",
           "multihop_gold_ll_acc", "long_context_ll_acc", "long_context_gold_only_ll_acc", "generated_n",
           "refusal_auroc_instruction", "refusal_recall_instruction", "refusal_auroc_gold_context",
           "refusal_recall_gold_context", "false_refusal_instruction", "refusal_preferred_instruction"]


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


def planted(ch, items, right, refuse=(), tokens=100):
    """A ranking in candidate_lists' layout: the gold value first for questions whose index is in
    `right` (a look-alike first for the others); the refusal, when ranked, first for the indices in
    `refuse` and last for the others."""
    cands, golds, with_refusal = ch01.candidate_lists(ch, items)
    scores = []
    for i, (c, g) in enumerate(zip(cands, golds)):
        n_values = len(c) - 1 if with_refusal else len(c)
        values_gold = g if g < n_values else 0  # an unanswerable question has no gold value
        row = [-5.0 - j for j in range(n_values)]
        if i in right:
            row[values_gold] = 0.0
        else:
            row[(values_gold + 1) % n_values] = 0.0
        if with_refusal:
            row.append(1.0 if i in refuse else -20.0)
        scores.append(row)
    return Ranking(scores, golds, [tokens] * len(items), 0.1 * len(items)), with_refusal


def unanswerable_indices(items):
    return {i for i, q in enumerate(items) if q.kind == "unanswerable"}


@pytest.fixture()
def chapter(kb):
    params = config.resolve("01_prompting", "smoke")
    single, unanswerable = kb.sample("single", 8, 0), kb.sample("unanswerable", 4, 0)
    test = {q.qid for q in single + unanswerable}
    examples = {1: prompts.few_shot_examples(kb.questions, 1, test, 0)}
    return ch01.Chapter(params, Clock(), None, SimpleNamespace(name="fake", context_window=2048),
                        kb, single, kb.sample("multihop", 2, 0), unanswerable, examples,
                        ch01.development_questions(kb, test, examples, 4, 0))


def rank_planted(ch, name, group, items, right, refuse=(), tokens=100, **extra):
    ranking, with_refusal = planted(ch, items, set(right), set(refuse), tokens)
    return ch01.add_ranked(ch, name, group, items, ranking, with_refusal, **extra)


def fill(ch, gold_right=range(100), haystack_right=((0, 1, 2), (0,))):
    """Every section of the chapter, planted, as the four Sections its steps return. Ranked: closed
    book always wrong and refusing nothing, the instruction refusing every unanswerable question (and
    nothing else), few-shot k=1 right on the first question, the gold document right on
    `gold_right`, the haystacks on the given indices. Generated: the same pattern on the first
    questions."""
    test = ch.test
    unans = unanswerable_indices(test)
    closed = ch01.Section([rank_planted(ch, "closed book", "test", test, set(), tokens=30),
                           rank_planted(ch, "instruction", "test", test, set(), refuse=unans, tokens=70)])
    items = ch.few_shot_items
    base = closed.named("instruction")
    few = ch01.Section([ch01.add_ranked(ch, "few-shot k=0", "few-shot", items,
                                        ch01.subset_ranking(base.ranking, [test.index(q) for q in items]),
                                        base.with_refusal, k=0),
                        rank_planted(ch, "few-shot k=1, development", "development", ch.development, {0, 1}, k=1),
                        rank_planted(ch, "few-shot k=1", "few-shot", items, {0}, tokens=110, k=1)])
    gold = ch01.Section([rank_planted(ch, "gold document", "test", test, set(gold_right), refuse=unans, tokens=220),
                         rank_planted(ch, "gold documents, two-hop", "test", ch.multihop, {0}, tokens=330)])
    asked = ch.single[:3]
    haystacks = ch01.Section([rank_planted(ch, name, "long context", asked, set(right), tokens=tokens, documents=2)
                              for name, right, tokens in zip(("haystack gold only", "haystack 600"), haystack_right,
                                                             (400, 650))])
    shown = ch.generated_test
    closed.generated += [ch01.add_condition(ch, "closed book", "test", shown, gen(answers(shown, set()), 30)),
                         ch01.add_condition(ch, "instruction", "test", shown,
                                            gen(answers(shown, unanswerable_indices(shown)), 70))]
    shown_few = [q for q in shown if q in items]
    few.generated.append(ch01.add_condition(ch, "few-shot k=1", "few-shot", shown_few,
                                            gen(answers(shown_few, {0}), 110), k=1))
    gold.generated += [ch01.add_condition(ch, "gold document", "test", shown, gen(answers(shown, set(gold_right)), 220)),
                       ch01.add_condition(ch, "gold documents, two-hop", "test", ch.multihop,
                                          gen(answers(ch.multihop, {0}), 330))]
    haystacks.generated += [ch01.add_condition(ch, name, "long context", asked, gen(answers(asked, set(right)), tokens),
                                               documents=2)
                            for name, right, tokens in zip(("haystack gold only", "haystack 600"), haystack_right,
                                                           (400, 650))]
    return closed, few, gold, haystacks


def found(ch, **planted):
    return ch01.Findings(*fill(ch, **planted))


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


def test_candidates_rank_the_refusal_only_beside_unanswerable_questions(chapter):
    cands, golds, with_refusal = ch01.candidate_lists(chapter, chapter.test)
    assert with_refusal and all(c[-1] == ch01.prompts.REFUSAL_ANSWER for c in cands)
    for q, c, g in zip(chapter.test, cands, golds):
        assert len(c) == ch01.CANDIDATES_K + 2
        assert (g == len(c) - 1) if q.kind == "unanswerable" else (c[g] == q.answer)
    cands, golds, with_refusal = ch01.candidate_lists(chapter, chapter.single)
    assert not with_refusal and all(len(c) == ch01.CANDIDATES_K + 1 and c[g] == q.answer
                                    for q, c, g in zip(chapter.single, cands, golds))


def test_rankings_are_recorded_by_meaning_and_agree_with_their_rows(chapter):
    f = found(chapter, gold_right={0, 1, 2})
    outcomes = f.measured.outcomes  # what the sections returned, nothing written into the run
    assert {"instruction", "instruction refusal", "closed book refusal", "few-shot k=1", "haystack 600",
            "instruction, generated", "instruction, generated refusal"} <= set(outcomes)
    assert "haystack 600 refusal" not in outcomes  # the haystacks ask answerable questions only
    for r in f.ranked:
        scores = outcomes[r.name]
        assert len(scores) == r.row["n"] == sum(q.kind != "unanswerable" for q in r.items)
        assert sum(scores.values()) / len(scores) == pytest.approx(r.row["ll_acc"])
        assert r.row["chance"] == pytest.approx(1 / (ch01.CANDIDATES_K + 1))  # the refusal is no value
    gold = f.by_name["gold document"]
    assert gold.row["ll_acc"] == pytest.approx(3 / 8) and gold.row["ll_lo"] < 3 / 8 < gold.row["ll_hi"]
    assert set(outcomes["instruction refusal"].values()) == {1.0} and set(outcomes["closed book refusal"].values()) == {0.0}
    for cond in f.generated:  # generated answers: their own names, the format view
        scores = outcomes[cond.name + ch01.GENERATED]
        assert sum(scores.values()) / len(scores) == pytest.approx(cond.row["contains"])
    # a name is one condition: sections that measured one twice cannot be put together
    with pytest.raises(ValueError, match=r"\['instruction'\] are ranked twice"):
        ch01.Findings(f, ch01.Section([f.by_name["instruction"]]))
    with pytest.raises(ValueError, match=r"\['instruction'\] are generated twice"):
        ch01.Findings(f, ch01.Section([], [f.answers["instruction"]]))
    with pytest.raises(ValueError, match="group"):
        rank_planted(chapter, "other", "closed", chapter.test, set())
    with pytest.raises(ValueError, match="ranked questions"):
        ch01.add_ranked(chapter, "short", "test", chapter.test, planted(chapter, chapter.single, set())[0], True)


def test_refusal_is_read_as_a_detector(chapter):
    test, unans = chapter.test, unanswerable_indices(chapter.test)
    perfect = rank_planted(chapter, "closed book", "test", test, set(), refuse=unans).row
    assert perfect["refusal_auroc"] == 1.0 and perfect["refusal_recall"] == 1.0
    assert perfect["refusal_preferred"] == 1.0 and perfect["false_refusal"] == 0.0
    everything = rank_planted(chapter, "instruction", "test", test, set(), refuse=set(range(len(test)))).row
    # refusing everything: every unanswerable question refused, but the detector is no better than chance
    assert everything["refusal_preferred"] == 1.0 and everything["false_refusal"] == 1.0
    assert everything["refusal_auroc"] == pytest.approx(0.5) and everything["refusal_recall"] == 0.0
    backwards = rank_planted(chapter, "gold document", "test", test, set(),
                             refuse=set(range(len(test))) - unans).row
    assert backwards["refusal_auroc"] == 0.0 and backwards["refusal_recall"] == 0.0
    assert "refusal_auroc" not in rank_planted(chapter, "two", "test", chapter.single, set()).row


def test_headline_metrics_keep_the_published_keys_with_declared_kinds(chapter):
    m = ch01.headline_metrics(chapter, found(chapter))
    assert set(PUBLISHED_KEYS + LL_KEYS) <= set(m.metrics)
    rules = m.metric_rules
    assert set(rules) == set(m.metrics) and all(r["kind"] in METRIC_KINDS for r in rules.values())
    n_gen = len(chapter.single[:chapter.params.n_generated])
    assert rules["closed_book_contains"] == {"kind": "rate", "n": n_gen} and m["generated_n"] == n_gen
    assert rules["closed_book_ll_acc"] == {"kind": "rate", "n": 8} and m["closed_book_n"] == 8
    assert rules["refusal_acc_instruction"]["kind"] == "rate" and rules["refusal_auroc_instruction"]["kind"] == "mean"
    assert rules["few_shot_best_k"]["kind"] == "choice" and rules["latency_long_context_s"]["kind"] == "machine"
    assert rules["cost_per_1k_gold_context_usd"]["kind"] == "exact"  # s4_actian prices input tokens only
    assert m["few_shot_best_k"] == 1 and m["few_shot_dev_n"] == 4 and rules["few_shot_dev_n"] == {"kind": "exact"}
    assert m["gold_context_ll_acc"] == 1.0 and m["closed_book_ll_acc"] == 0.0
    assert m["ll_chance"] == pytest.approx(0.25) and m["refusal_auroc_instruction"] == 1.0
    assert m["refusal_auroc_closed_book"] == pytest.approx(0.5)  # all tied: no refusal anywhere
    assert m["gold_context_contains"] == 1.0 and m["refusal_acc_instruction"] == 1.0
    assert m["long_context_gold_only_ll_acc"] == 1.0 and m["long_context_ll_acc"] == pytest.approx(1 / 3)
    assert m["long_context_prompt_tokens"] == 650 and m["unanswerable_n"] == 4 and m["long_context_n"] == 3


def test_the_few_shot_k_is_chosen_on_development_questions_alone(chapter):
    ch = chapter
    _, few, _, _ = fill(ch)
    assert ch01.chosen_few_shot(few).name == "few-shot k=1"
    # k=3 ranks 3 of 4 development questions first against k=1's 2, but none of the test ones:
    # the development questions choose it all the same (test scores play no part)
    few.ranked += [rank_planted(ch, "few-shot k=3, development", "development", ch.development, {0, 1, 2}, k=3),
                   rank_planted(ch, "few-shot k=3", "few-shot", ch.few_shot_items, set(), k=3)]
    assert ch01.chosen_few_shot(few).name == "few-shot k=3"
    # a tie on development keeps the first k in few_shot_ks order; no development row: no choice
    few.ranked[-2].row["ll_acc"] = few.named("few-shot k=1, development").row["ll_acc"]
    assert ch01.chosen_few_shot(few).name == "few-shot k=1"
    assert ch01.chosen_few_shot(ch01.Section(few.ranked[:1])) is None


def test_development_questions_share_nothing_with_the_test_or_the_examples(chapter, kb):
    ch = chapter
    test = {q.qid for q in ch.test}
    shown = {t for picked in ch.examples.values() for t, _ in picked}
    assert len(ch.development) == 4 and not test & {q.qid for q in ch.development}
    assert not any(shown & set(q.train_texts) for q in ch.development)
    assert all(q.kind == "single" for q in ch.development)
    with pytest.raises(ValueError, match="n_few_shot_dev=100000"):
        ch01.development_questions(kb, test, ch.examples, 100_000, 0)


def test_comparisons_state_the_chapter_claims_on_the_rankings(chapter):
    stated = ch01.comparisons(chapter, found(chapter))
    by_claim = {c.claim: c.as_dict() for c in judged_of(stated)}
    assert set(by_claim) == {"K9-long-context", "K1-gold-document", "prompting-few-shot", "refusal-instruction"}
    assert (by_claim["K9-long-context"]["a"], by_claim["K9-long-context"]["b"]) == ("haystack gold only", "haystack 600")
    # the fake gold-document arm answers all 8 and the instruction arm sits at chance: one arm at each bound
    assert by_claim["K1-gold-document"]["n"] == 8 and by_claim["K1-gold-document"]["bound"] == "floor and ceiling"
    # 2 questions of 3 apart, gold-only right on all, the haystack at chance: one arm at each bound, which
    # the verdict names before its p (not decided at this n either)
    assert by_claim["K9-long-context"]["p"] > 0.05 and by_claim["K9-long-context"]["bound"] == "floor and ceiling"
    assert by_claim["prompting-few-shot"]["b"] == "few-shot k=0"
    assert (by_claim["refusal-instruction"]["a"], by_claim["refusal-instruction"]["b"]) == (
        "instruction refusal", "closed book refusal")
    assert by_claim["refusal-instruction"]["n"] == 4 and by_claim["refusal-instruction"]["mean_a"] == 1.0
    assert all(c["mde"] > 0 for c in by_claim.values())
    assert all(s.comparison is not None for s in stated.values())
    # (draw d2 declares it secondary: its sentence says "exploratory, " first)
    said = stated["K1-gold-document"].comparison.sentence("gold document", "instruction prompt")
    assert said.removeprefix("exploratory, ").startswith("uninformative here")


def test_comparisons_say_what_was_not_measured(chapter):
    import dataclasses

    chapter = dataclasses.replace(chapter, unanswerable=[])
    closed, few, gold, haystacks = fill(chapter)
    f = ch01.Findings(closed, few, gold, ch01.Section(haystacks.ranked[:1], haystacks.generated))  # no size fits
    stated = ch01.comparisons(chapter, f)
    assert stated["K9-long-context"].comparison is None and "window" in stated["K9-long-context"].missing
    assert stated["refusal-instruction"].comparison is None
    m = ch01.headline_metrics(chapter, f)
    assert "refusal_acc_instruction" not in m and "refusal_auroc_instruction" not in m


def test_sanity_properties_hold_only_when_all_do(chapter):
    planted_m = ch01.headline_metrics(chapter, found(chapter)).metrics
    assert ch01.sanity_properties(planted_m)["holds"].tolist() == [True, True, True]
    above_chance = {**planted_m, "few_shot_best_ll_acc": planted_m["ll_chance"] + ch01.SANITY_CLOSED_BOOK_MAX + 0.01}
    assert ch01.sanity_properties(above_chance)["holds"].tolist() == [True, False, True]
    low_gold = ch01.sanity_properties({**planted_m, "gold_context_ll_acc": ch01.SANITY_GOLD_DOCUMENT_MIN - 0.01})
    assert low_gold["holds"].tolist() == [True, True, False] and ch01.sanity_wording(low_gold) == "do NOT all hold"
    assert ch01.sanity_wording(ch01.sanity_properties(planted_m)) == "hold"


def test_haystack_levels_leave_room_in_the_window():
    params = SimpleNamespace(long_context_tokens=[600, 1800, 1900])
    assert ch01.haystack_levels(params, 2048) == [0, 600, 1800]


def test_haystack_groups_ask_each_haystack_its_own_documents_questions(chapter):
    chapter.params.n_long_context_questions, chapter.params.haystack_documents = 20, 2
    groups = ch01.haystack_groups(chapter)
    docs, questions = chapter.kb.questions_about_documents(20, chapter.params.seed)
    assert [q for _, asked in groups for q in asked] == [q for q in questions if q in {x for _, a in groups for x in a}]
    assert sum(len(a) for _, a in groups) == len(questions) and len(groups) > 1
    for group_docs, asked in groups:
        assert 1 <= len(group_docs) <= 2 and {q.doc_ids[0] for q in asked} <= {d.doc_id for d in group_docs}


def test_tables_show_accuracy_against_chance_and_the_detector(chapter):
    closed, few, gold, haystacks = fill(chapter)
    table = ch01.ranked_table(closed, gold)  # the sections' conditions, in run order
    assert list(table.index) == ["closed book", "instruction", "gold document", "gold documents, two-hop"]
    assert table.loc["closed book", "chance"] == "25%" and table.loc["gold document", "questions"] == 8
    f = ch01.Findings(closed, few, gold, haystacks)
    refusals = ch01.refusal_table(f)
    assert "gold documents, two-hop" not in refusals.index and refusals.loc["instruction", "AUROC"] == "1.00"
    assert "few-shot k=1" in ch01.conditions_table(f).index
    examples = ch01.answer_examples(closed, gold)  # 4 answerable and 2 unanswerable questions, three conditions
    assert list(examples.columns) == ["question", "gold", *ch01.ANSWER_EXAMPLES] and len(examples) == 6
    assert f.long_context_questions == chapter.single[:3]


def test_figure_has_error_bars_for_every_condition(chapter):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = found(chapter)
    fig = plots.accuracy_vs_tokens(f.frame("test"), f.frame("few-shot"), f.frame("long context"), "fake")
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # test conditions, few-shot, haystacks: each an errorbar container
    # every ranked condition but the development rows, which only choose the few-shot k
    assert sum(len(c.lines[0].get_xdata()) for c in ax.containers) == len(f.ranked) - 1
    assert any(line.get_linestyle() == ":" for line in ax.get_lines())  # chance
    plt.close(fig)


def test_the_chapter_holds_set_up_only(chapter):
    """Sections hand their conditions on by returning them: the chapter is frozen, so a section that
    stored a result on it would fail at once."""
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        chapter.single = []
    assert {f.name for f in dataclasses.fields(ch01.Chapter)} == {
        "params", "clock", "folder", "lm", "kb", "single", "multihop", "unanswerable", "examples", "development"}
