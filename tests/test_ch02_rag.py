"""Chapter 2's experiment module without the language model: per-question outcomes agree with the
chapter's rates, and the chunk-size and top-k comparisons pick their conditions (or say why not)."""

from types import SimpleNamespace

import pytest

from conftest import ROOT

from ragft import metrics, rag
from ragft.experiments import ch02_rag as ch02
from ragft.generation import Generation
from ragft.rag.sources import CorpusError, QAItem
from ragft.rag.store import Hit
from ragft.results import ChapterRun

GOLD = "The Corvane X2 weighs 4 kg."


def hit(text: str, doc: str = "d") -> Hit:
    return Hit(f"{doc}#{abs(hash(text)) % 997}", doc, "", text, 1.0)


def item(qid: str, kind: str = "single") -> QAItem:
    answers = () if kind == "unanswerable" else ("4 kg",)
    return QAItem(qid, f"question {qid}?", answers, kind, (GOLD,) if kind != "unanswerable" else ())


ITEMS = [item("q1"), item("q2"), item("q3"), item("u1", "unanswerable")]
OTHER, RELEVANT = hit("Nothing here."), hit(f"Intro. {GOLD}")
RANKINGS = [[RELEVANT, OTHER, OTHER], [OTHER, OTHER, RELEVANT], [OTHER, OTHER, OTHER], [OTHER]]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hits_at_k_average_to_the_recall_at_k(k):
    hits = ch02.hits_at(ITEMS, RANKINGS, k)
    assert set(hits) == {"q1", "q2", "q3"}  # unanswerable questions have no relevant chunk to find
    assert sum(hits.values()) / len(hits) == rag.retrieval_scores(ITEMS, RANKINGS, [k])[f"recall_at_{k}"]


def test_answer_outcomes_split_by_meaning_and_agree_with_score_answers():
    texts = ["It weighs 4 kg [1].", "About 5 kg.", "I don't know.", "I don't know."]
    answered, refused = metrics.answer_outcomes(ITEMS, texts)
    scores = metrics.score_answers(texts, ITEMS)
    assert answered == {"q1": 1, "q2": 0, "q3": 0} and refused == {"u1": 1}
    assert sum(answered.values()) / len(answered) == scores["contains"]
    assert sum(refused.values()) / len(refused) == scores["refusal_acc"]


def test_generation_tokens_follow_the_questions_sent_to_the_model():
    rankings = [RANKINGS[0], [], RANKINGS[2]]  # the second was refused without a model call
    gen = Generation(["a", "b"], [100, 300], [5, 7], 1.0)
    assert ch02.generation_tokens(ITEMS[:3], rankings, gen) == {"q1": (100, 5), "q3": (300, 7)}


def test_citation_outcomes_cover_questions_whose_relevant_chunk_was_a_source():
    answers = ["4 kg [1]", "4 kg [1]", "4 kg [2]", "I don't know."]
    outcomes = ch02.citation_outcomes(ITEMS, RANKINGS, answers)
    assert outcomes == {"q1": 1, "q2": 0}  # q3's sources missed the relevant chunk; u1 has none
    scores = rag.citation_scores(ITEMS, RANKINGS, answers)
    assert sum(outcomes.values()) / len(outcomes) == scores["citation_accuracy"]


def test_record_leaves_out_an_empty_part_and_keeps_tokens_of_its_own_questions():
    run = ChapterRun("02_rag", None)
    ch02.record(run, "answer top-1 refusal", {})
    ch02.record(run, "answer top-1", {"q1": 1}, {"q1": (10, 2), "u1": (12, 3)})
    assert list(run.outcomes) == ["answer top-1"] and run.outcome_tokens["answer top-1"] == {"q1": [10, 2]}


def grid_chapter(chunk_sizes, best_chunk, top_ks, best_k, n=30):
    """A chapter whose grid outcomes are recorded: larger chunk sizes and top-ks find more."""
    run = ChapterRun("02_rag", None)
    for size in chunk_sizes:
        for k in sorted(set(top_ks) | {ch02.HEADLINE_K}):
            found = n if size == best_chunk else n // 3
            found = min(n, found + 3 * k) if size == best_chunk else found
            run.record(ch02.retrieval_condition("dense", size, k), {f"q{i}": int(i < found) for i in range(n)})
    params = SimpleNamespace(chunk_sizes=chunk_sizes, top_ks=top_ks)
    return SimpleNamespace(run=run, params=params, best_chunk=best_chunk, best_k=best_k)


def test_chunk_size_comparisons_set_the_best_size_against_the_largest_and_smallest():
    ch = grid_chapter([128, 256, 512, 1024], 256, [1, 3, 5, 8], 3)
    large, small = ch02.chunk_size_comparisons(ch)
    assert (large.comparison.claim, large.comparison.a, large.comparison.b) == (
        "R1-chunk-size", "dense 256-token hit@5", "dense 1024-token hit@5")
    assert (small.comparison.claim, small.comparison.b) == ("R1-small-chunks", "dense 128-token hit@5")
    assert large.comparison.verdict == "supported" and large.comparison.expect == "greater"
    assert {c["claim"] for c in ch.run.comparisons} == {"R1-chunk-size", "R1-small-chunks"}


def test_a_best_size_at_the_edge_of_the_grid_is_not_compared_with_itself():
    ch = grid_chapter([128, 256], 256, [1, 3], 1)
    large, small = ch02.chunk_size_comparisons(ch)
    assert large.comparison is None and "largest" in large.missing
    assert small.comparison.b == "dense 128-token hit@5"


@pytest.mark.parametrize("top_ks, best_k, expected", [([1, 3, 5, 8], 3, (8, 3)), ([1, 3], 3, (3, 1))])
def test_top_k_comparison_sets_the_largest_top_k_against_the_chosen_one(top_ks, best_k, expected):
    ch = grid_chapter([128, 256], 256, top_ks, best_k)
    stated = ch02.top_k_comparison(ch)
    more, fewer = expected
    assert stated.comparison.claim == "R2-top-k"
    assert (stated.comparison.a, stated.comparison.b) == (f"dense 256-token hit@{more}", f"dense 256-token hit@{fewer}")


def test_a_single_top_k_is_not_compared():
    assert ch02.top_k_comparison(grid_chapter([128], 128, [3], 3)).comparison is None


def test_own_inputs_are_read_before_any_model_loads(tmp_path):
    """A malformed questions file fails in the first step of the chapter, naming the file and line."""
    from ragft.config import resolve

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "Where?", "answers": ["north"]}\n{nope\n')
    params = resolve("02_rag", "smoke", corpus_dir=str(ROOT / "data" / "sample_docs"), questions_file=str(bad))
    with pytest.raises(CorpusError, match="q.jsonl, line 2: not JSON"):
        ch02.read_own_inputs(params)
    own = ch02.read_own_inputs(resolve("02_rag", "smoke"))
    assert own.corpus.sources and own.items and own.questions_file.endswith("sample_questions.jsonl")
