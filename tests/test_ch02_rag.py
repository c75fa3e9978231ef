"""Chapter 2's experiment module without the language model: per-question outcomes agree with the
chapter's rates, and the chunk-size and top-k comparisons pick their conditions (or say why not)."""

from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import ROOT

from ragft import metrics, rag
from ragft.config import resolve
from ragft.experiments import ch02_rag as ch02
from ragft.generation import Generation
from ragft.rag.sources import CorpusError, QAItem
from ragft.rag.store import Hit
from ragft.results import Measured

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
    measured = Measured()
    ch02.record(measured, "answer top-1 refusal", {})
    ch02.record(measured, "answer top-1", {"q1": 1}, {"q1": (10, 2), "u1": (12, 3)})
    assert list(measured.outcomes) == ["answer top-1"] and measured.outcome_tokens["answer top-1"] == {"q1": [10, 2]}


ARTICLE = "Brockmere is a town on the river Ald. It was founded in 1204 by weavers.\n\nThe Ald flows north."
SPAN = rag.SpanItem("q1", "When was Brockmere founded?", ("1204",), "single", (), ("art-1",), ARTICLE, ((56, 60),))


@pytest.mark.parametrize("doc_id, text, relevant", [
    ("art-1", "It was founded in 1204 by weavers.", True),  # covers characters 56-60
    ("art-1", "It was founded in 12", False),  # cuts the span
    ("art-1", "The Ald flows north.", False),  # the right article, another place
    ("art-2", "It was founded in 1204 by weavers.", False),  # the same words in another article
    ("art-1", "founded in 1204, said nobody", False),  # not a piece of the article: its place is unknown
])
def test_a_span_item_counts_a_chunk_that_covers_its_answer_span(doc_id, text, relevant):
    assert SPAN.is_relevant(doc_id, text) is relevant


def test_the_budget_is_the_largest_where_every_arm_is_below_the_bar_on_development_questions():
    dev = pd.DataFrame({"hit_within_256": [0.85, 0.60], "hit_within_512": [0.89, 0.73],
                        "hit_within_1024": [0.94, 0.86]}, index=pd.Index([64, 256], name="chunk_size"))
    assert ch02.choose_budget(dev, [64, 256], [256, 512, 1024]) == 512  # 1024: 64-token chunks reach 0.94
    assert ch02.choose_budget(dev.assign(hit_within_256=0.95, hit_within_512=0.95), [64, 256], [256, 512, 1024]) == 256
    # a budget that cannot hold one chunk of a compared size is never chosen: 510 does not fit in 256
    assert ch02.budget_k(510, 256) == 0 and ch02.budget_k(64, 512) == 8


def articles_judged(sizes=(64, 256, 510), n=40, profile="smoke") -> dict:
    """Every comparison of the chapter judged on recorded SQuAD outcomes alone (the knowledge base's
    sections skipped): 256-token chunks find 30 of 40 within the budget, 64-token ones 20."""
    measured = Measured()
    hits = lambda found: {f"q{i}": int(i < found) for i in range(n)}  # noqa: E731
    for size, within, at1, at3 in ((64, 20, 10, 25), (256, 30, 15, 28)):
        measured.record(ch02.squad_budget_hit(size, 512), hits(within))
        measured.record(ch02.squad_hit("dense", size, 1), hits(at1))
        measured.record(ch02.squad_hit("dense", size, 3), hits(at3))
    measured.record(ch02.squad_hit("hybrid", 256, 3), hits(33))
    ch = SimpleNamespace(params=SimpleNamespace(profile=profile, retrieval="hybrid"))
    articles = SimpleNamespace(budget=512, unmeasured=ch02._articles_unmeasured(ch, measured, list(sizes), 512))
    return ch02.comparisons(ch, measured.outcomes, ch02.Skipped("knowledge_base"), articles)


def test_squad_comparisons_are_the_plans_r1_and_r2_at_the_chosen_budget():
    said = articles_judged()
    stated = {cid: s.comparison for cid, s in said.items()}
    assert set(stated) == set(ch02.SQUAD_COMPARISONS) | {"K9-top-k", "R3-rerank"}
    assert stated["K9-top-k"] is None and "knowledge_base section is not in" in said["K9-top-k"].missing
    assert stated["R1-reader"] is None  # no reader outcomes recorded: the sentence says the model answered none
    assert "answered no SQuAD question" in said["R1-reader"].missing
    # the cpu profile leaves R1-reader to the smoke and gpu profiles (the plan): its sentence says so
    assert "smoke and gpu profiles measure it" in articles_judged(profile="cpu")["R1-reader"].missing
    r1 = stated["R1-small-chunks"]
    assert (r1.a, r1.b) == ("SQuAD dense 256-token hit within 512 tokens", "SQuAD dense 64-token hit within 512 tokens")
    assert r1.diff == pytest.approx(10 / 40)  # 30 against 20 of 40, every one of the 10 a discordant pair
    assert (stated["R2-top-k"].a, stated["R2-top-k"].b) == ("SQuAD dense 256-token hit@3", "SQuAD dense 256-token hit@1")
    assert stated["R2-top-k"].diff == pytest.approx(13 / 40)


def test_squad_comparisons_without_the_claims_sizes_say_so():
    stated = articles_judged(sizes=(128, 256))
    assert all(stated[c].comparison is None and "lack 64" in stated[c].missing  # every sentence says why
               for c in ch02.SQUAD_COMPARISONS)


def test_own_inputs_are_read_before_any_model_loads(tmp_path):
    """A malformed questions file fails in the first step of the chapter, naming the file and line."""
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "Where?", "answers": ["north"]}\n{nope\n')
    params = resolve("02_rag", "smoke", corpus_dir=str(ROOT / "data" / "sample_docs"), questions_file=str(bad))
    with pytest.raises(CorpusError, match="q.jsonl, line 2: not JSON"):
        ch02.read_own_inputs(params)
    own = ch02.read_own_inputs(resolve("02_rag", "smoke"))
    assert own.corpus.sources and own.items and own.questions_file.endswith("sample_questions.jsonl")


# ---------------------------------------------------------------------------------------------
# Scored answers: candidate layout, per-question outcomes, refusal detectors, fresh ingestion


def test_reply_candidates_and_split_scores_share_one_layout():
    values = ["3 kg", "4 kg", "5 kg", "6 kg"]
    cands = ch02.reply_candidates(values, 1, 3)
    assert cands == values + [ch02.REFUSAL_ANSWER, "4 kg [1]", "4 kg [2]", "4 kg [3]", "[1]", "[2]", "[3]"]
    parts = ch02.split_scores(list(range(len(cands))), 4, 3)
    assert parts == {"values": [0, 1, 2, 3], "refusal": 4, "cite": [5, 6, 7], "source": [8, 9, 10]}
    # an unanswerable question, or a single source: values and the refusal only
    assert ch02.reply_candidates(values, None, 3) == values + [ch02.REFUSAL_ANSWER]
    assert ch02.reply_candidates(values, 1, 1) == values + [ch02.REFUSAL_ANSWER]


def test_question_outcomes_read_answer_citation_rerank_and_refusal():
    # values (gold at 1), refusal, "4 kg [i]" for i = 1..3, "[i]" for i = 1..3; source 3 (index 2) is relevant
    scores = [-5.0, -2.0, -6.0, -7.0, -4.0, -9.0, -8.0, -3.0, -1.0, -2.5, -3.5]
    got = ch02.question_outcomes(scores, 4, 1, {2}, 3)
    assert got == {"refusal_score": -2.0, "answer": 1, "pool_hit": 1, "retrieval_hit1": 0,
                   "rerank_hit1": 0, "attribution": 1, "cite_position": 3, "relevant_sources": [3]}
    # a tie with a look-alike is wrong; no relevant source: no attribution, reranking cannot hit
    tie = [-2.0, -2.0, -6.0, -7.0, -4.0, -9.0, -8.0, -3.0, -1.0, -2.5, -3.5]
    got = ch02.question_outcomes(tie, 4, 1, set(), 3)
    assert got["answer"] == 0 and "attribution" not in got and got["rerank_hit1"] == 0 and got["pool_hit"] == 0
    assert "cite_position" not in got
    # unanswerable: only the refusal score (refusal LL minus the best value's)
    assert ch02.question_outcomes([-3.0, -2.0, -6.0, -7.0, -1.5], 4, None, set(), 0) == {"refusal_score": 0.5}


def test_refusal_detectors_report_auroc_and_recall_at_five_percent_false_refusals():
    measured = Measured()
    answerable = [i / 100 for i in range(100)]
    table = ch02.refusal_detectors(measured, {"perfect": ("perfect", [2.0, 3.0], answerable),
                                         "useless": ("useless", answerable[::10], answerable),
                                         "empty": ("empty", [], answerable)})
    assert list(table.index) == ["perfect", "useless"]  # a detector with no positives is left out
    assert measured["perfect_auroc"] == 1.0 and measured["perfect_recall_at_5pct_fpr"] == 1.0
    assert abs(measured["useless_auroc"] - 0.5) < 0.06 and measured["useless_recall_at_5pct_fpr"] <= 0.1
    assert measured["perfect_n_unanswerable"] == 2 and measured["perfect_n_answerable"] == 100


class FakeStore:
    """Holds chunk counts: each ingest adds what is not there yet (as ChunkStore.ingest reports)."""

    def __init__(self, chunks: int = 0):
        self.chunks = chunks

    def count(self):
        return self.chunks

    def ingest(self, pages):
        added = 0 if self.chunks else 2 * len(pages)
        self.chunks += added
        return SimpleNamespace(docs_added=len(pages) if added else 0, chunks_added=added, seconds=0.01)


def test_ingestion_throughput_is_measured_on_a_fresh_collection_only():
    """Issue 12: a re-run against a store that already holds the pages must not publish the
    throughput of an ingest that did nothing (the 2,689 chunks/s of a Chroma-server re-run)."""
    pages = ["a", "b", "c"]
    report = ch02.fresh_ingest(FakeStore(), pages)
    assert report.chunks_added == 6 and report.docs_added == 3
    with pytest.raises(RuntimeError, match="fresh collection"):
        ch02.fresh_ingest(FakeStore(6), pages)


def test_each_run_names_its_own_knowledge_base_collections():
    a, b = (ch02.Chapter(None, None, None, None, None, None, [], {}) for _ in range(2))
    assert a.run_tag != b.run_tag and len(a.run_tag) == 8


def test_the_chapter_holds_set_up_only():
    """Steps hand their results on by returning them: the chapter is frozen, so a step that stored a
    result on it would fail at once, and no field holds a step's result."""
    import dataclasses

    ch = ch02.Chapter(None, None, None, None, None, None, [], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ch.best_k = 3
    assert {f.name for f in dataclasses.fields(ch02.Chapter)} == {
        "params", "clock", "folder", "lm", "embed_model", "kb", "pages", "where", "nq", "own", "run_tag"}


def test_a_section_left_out_of_sections_is_skipped_and_its_cells_run_through():
    """`sections` leaves the knowledge base out: its steps return a Skipped that every attribute,
    call and loop of the chapter's cells passes through, figures come back as None (glued and closed
    as nothing), and the step itself never runs (no model here to run it with)."""
    params = resolve("02_rag", "smoke", sections=["own_documents"])
    ch = ch02.Chapter(params, clock=None, folder=None, lm=None, embed_model=None, kb=None, pages=[], where={})
    index = ch02.ingest(ch)
    assert isinstance(index, ch02.Skipped) and isinstance(index.styled(), ch02.Skipped)
    grid = ch02.retrieval_grid(ch, index)  # handed a skipped step's result: skipped too
    assert isinstance(grid, ch02.Skipped) and "knowledge_base" in repr(grid)
    assert isinstance(grid.table.style.format("{:.1%}"), ch02.Skipped) and list(grid.stated) == []
    assert ch02.heatmap(grid) is None and isinstance(ch02.methods_styled(ch02.retrieval_methods(ch, grid)), ch02.Skipped)
    assert isinstance(ch02.scale(ch, index, grid), ch02.Skipped) and isinstance(ch02.real_data(ch, grid, None, None), ch02.Skipped)
    assert "not in this run's sections" in grid._repr_markdown_()
    with pytest.raises(AttributeError):
        grid._repr_html_  # IPython's look-ups find nothing, so the one-line markdown is what shows


@pytest.mark.parametrize("sections,message", [
    (["own_documents", "everything"], "use a non-empty list from"), ([], "use a non-empty list from"),
    (["own_documents", "scale"], "read the knowledge base's index: add knowledge_base"),
])
def test_sections_are_checked_by_name(sections, message):
    from ragft.config import ParamError

    with pytest.raises(ParamError, match=f"sections=.*{message}"):
        resolve("02_rag", "smoke", sections=sections)


def test_chunk_size_and_top_k_are_chosen_on_development_questions_only():
    """The choice reads questions about other facts than the test questions, and its evidence is kept:
    here the 256-token store ranks the relevant chunk first for development questions, the 128-token
    one third, whatever the test questions would say."""
    from ragft.corpus import build_kb

    p = resolve("02_rag", "smoke")
    kb = build_kb(p.kb_seed, p.kb)
    test = rag.kb_items(kb.sample("single", 4, p.seed))
    asked = []

    class Store:
        def __init__(self, rank):
            self.rank = rank

        def embed(self, questions):
            return [None] * len(questions)

        def dense(self, questions, depth, vectors=None):
            asked.extend(questions)
            rows = []
            for q in questions:
                it = next(i for i in dev_items if i.question == q)
                relevant = hit(it.gold_sentences[0])
                rows.append([OTHER] * (self.rank - 1) + [relevant] + [OTHER] * (depth - self.rank))
            return rows

    dev_items = [it for it in rag.kb_items(kb.by_kind("single")) if it.qid not in {t.qid for t in test}]
    ch = SimpleNamespace(params=p, kb=kb, depth=3, score_ks=[1, 3])
    out = ch02.development_choice(ch, test, {128: Store(3), 256: Store(1)})
    assert (out["chunk"], out["k"]) == (256, 1) and out["n"] == min(p.n_retrieval_questions, len(dev_items))
    assert not set(asked) & {t.question for t in test}  # no test question was read to choose
    assert list(out["table"].index) == [128, 256]  # the evidence, which the grid keeps on the results file
