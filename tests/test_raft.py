"""The RAFT dataset builder: oracle share, exact quotes, clean distractors, determinism, JSONL, and
the readers of a RAFT answer."""

import math

import pytest

from conftest import FIXTURES
from ragft import prompts, raft
from ragft.corpus import benchmarks
from ragft.rag import Hit
from ragft.train import TrainingDataError

POOL = [f"Document {i}: the Quarrington gate number {i} is painted colour {i}." for i in range(40)]


def sources(n=200):
    return [raft.RaftSource(f"q{i}", f"Who runs lab {i}?", f"Person {i}",
                            (f"Lab {i} opened in 2019. Lab {i} is run by Person {i}. It has a teal door.",),
                            (f"Lab {i} is run by Person {i}.",)) for i in range(n)]


@pytest.mark.parametrize("p", [0.0, 0.4, 0.8, 1.0])
def test_oracle_share_is_p_within_sampling_error(p):
    n = 400
    records = raft.build_raft(sources(n), POOL, 3, p, seed=1)
    share = sum(bool(r.oracle_positions) for r in records) / n
    assert abs(share - p) <= 3 * math.sqrt(p * (1 - p) / n) + 1e-9
    for r in records:  # always 1 + k documents: a left-out oracle is replaced by one more distractor
        assert len(r.documents) == 4


def test_quotes_are_exact_spans_of_the_oracle_and_distractors_never_the_oracle():
    records = raft.build_raft(sources(), POOL, 3, 0.8, seed=2)
    for s, r in zip(sources(), records):
        for q in raft.quotes_in(r.target):
            assert q in s.oracles[0]
        assert raft.quote_correct(r.target, list(s.oracles)) == 1.0
        distractors = [d for i, d in enumerate(r.documents) if i not in r.oracle_positions]
        assert s.oracles[0] not in distractors
        assert [r.documents[i] for i in r.oracle_positions] in ([], list(s.oracles))
        assert raft.final_answer(r.target) == s.answer


def test_a_chunk_holding_the_gold_sentence_is_never_a_distractor():
    s = sources(1)[0]
    twin = "Another page. " + s.quotes[0]  # a second chunk that also states the answer
    records = raft.build_raft([s] * 50, [twin, *POOL[:5]], 3, 0.0, seed=0)
    assert all(twin not in r.documents for r in records)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = raft.build_raft(sources(30), POOL, 3, 0.8, seed=5)
    b = raft.build_raft(sources(30), POOL, 3, 0.8, seed=5)
    c = raft.build_raft(sources(30), POOL, 3, 0.8, seed=6)
    assert [r.documents for r in a] == [r.documents for r in b]
    assert [r.documents for r in a] != [r.documents for r in c]


def test_hard_negatives_are_used_in_rank_order():
    s = sources(1)[0]
    ranked = [s.oracles[0], "near miss 1", "near miss 2", "near miss 3"]
    (r,) = raft.build_raft([s], POOL, 2, 1.0, seed=0, hard_negatives={s.qid: ranked})
    assert sorted(r.documents) == sorted([s.oracles[0], "near miss 1", "near miss 2"])


def test_no_cot_target_is_the_answer_alone_and_prompts_differ():
    s = sources(1)
    (cot,) = raft.build_raft(s, POOL, 1, 1.0, seed=0)
    (plain,) = raft.build_raft(s, POOL, 1, 1.0, seed=0, cot=False)
    assert plain.target == "Person 0" and prompts.BEGIN_QUOTE in cot.target and prompts.ANSWER_MARKER in cot.target
    assert cot.documents == plain.documents and cot.messages()[0] != plain.messages()[0]
    assert plain.to_example().answer == "Person 0"


def test_bad_input_is_refused():
    with pytest.raises(TrainingDataError, match="p_oracle"):
        raft.build_raft(sources(1), POOL, 1, 1.5, seed=0)
    with pytest.raises(TrainingDataError, match="needs 3 distractors"):
        raft.build_raft(sources(1), POOL[:2], 3, 1.0, seed=0)
    with pytest.raises(TrainingDataError, match="teacher_quotes"):
        raft.build_raft([raft.RaftSource("x", "q?", "a", ("doc",), ())], POOL, 1, 1.0, seed=0)


def test_jsonl_round_trip_and_bad_line(tmp_path):
    records = raft.build_raft(sources(5), POOL, 2, 0.8, seed=0)
    path = raft.save_jsonl(records, tmp_path / "raft.jsonl")
    assert raft.load_jsonl(path) == records
    path.write_text(path.read_text() + '{"qid": 1}\n')
    with pytest.raises(TrainingDataError, match="line 6"):
        raft.load_jsonl(path)


def test_answer_readers():
    text = "The documents say ##begin_quote##Lab 3 is run by Person 3.##end_quote##.\n<ANSWER>: Person 3"
    assert raft.final_answer(text) == "Person 3" and raft.final_answer("just this") == "just this"
    assert raft.quote_correct(text, ["Lab 3 opened. Lab 3 is run by  Person 3."]) == 1.0  # whitespace-insensitive
    assert raft.quote_correct(text, ["Lab 3 is run by Person 4."]) == 0.0
    assert raft.quote_correct("<ANSWER>: Person 3", ["Lab 3 is run by Person 3."]) == 0.0  # no quote
    # a word doubled while copying is still a quote of the oracle; a word left out or changed is not
    slip = "##begin_quote##Lab 3 is run run by Person 3.##end_quote##"
    assert raft.quote_correct(slip, ["Lab 3 is run by Person 3."]) == 1.0
    assert raft.quote_correct("##begin_quote##Lab 3 is by Person 3.##end_quote##", ["Lab 3 is run by Person 3."]) == 0.0
    assert raft.copied("a  a b b b c a") == "a b c a"
    assert raft.reached_marker(text) and not raft.reached_marker("##begin_quote##Lab 3 is")


def test_reasoning_prefix_ends_at_the_marker_even_when_the_budget_cut_it():
    text = "##begin_quote##Lab 3 is run by Person 3.##end_quote##\n<ANSWER>: Person 3"
    assert raft.reasoning_prefix(text) == "##begin_quote##Lab 3 is run by Person 3.##end_quote##\n<ANSWER>:"
    assert raft.reasoning_prefix("##begin_quote##Lab 3 is run ") == "##begin_quote##Lab 3 is run\n<ANSWER>:"
    assert raft.reasoning_prefix("") == "<ANSWER>:"


def test_label_scores_from_ranked_labels():
    from ragft.scoring import Ranking

    r = Ranking([[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0], [-3.0, -2.0, -1.0], [-1.0, -2.0, -3.0]], [0, 0, 2, 1], [1] * 4, 0.0)
    said = raft.predicted_labels(r)
    assert said == ["yes", "no", "maybe", "yes"]
    s = raft.label_scores(said, ["yes", "yes", "maybe", "no"])
    assert s["acc"] == 0.5
    # yes: tp 1, fp 1, fn 1 -> 0.5; no: tp 0 -> 0; maybe: tp 1 -> 1
    assert s["macro_f1"] == pytest.approx((0.5 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="pair up"):
        raft.label_scores(["yes"], ["yes", "no"])


def test_conversations_refuse_an_unknown_style_and_missing_documents():
    with pytest.raises(ValueError, match="style"):
        raft.conversations(["q?"], [["d"]], "open")
    with pytest.raises(ValueError, match="documents"):
        raft.conversations(["q?"], None, "raft")
    assert raft.conversations(["q?"], None, "closed")[0][-1]["content"] == "q?"


def test_rank_after_reasoning_scores_the_answer_after_the_readers_own_quote(lm):
    """Scoring after the reasoning is scoring the whole reply: the reasoning is prefilled once, and the
    candidates differ exactly as the fully prefixed candidates scored one by one do; the ranking
    follows the answer, not the shared quote."""
    from ragft.scoring import rank_candidates

    docs = [["Lab 3 opened in 2019. Lab 3 is run by Person 3.", "The gate is teal."]]
    reply = ["##begin_quote##Lab 3 is run by Person 3.##end_quote##\n<ANSWER>: Person 3"]
    cands = [["Person 3", "Person 8", "Person 11"]]
    r = raft.rank(lm, ["Who runs lab 3?"], docs, "raft", cands, [0], reasoning=reply)
    prefix = "##begin_quote##Lab 3 is run by Person 3.##end_quote##\n<ANSWER>:"
    whole = rank_candidates(lm, raft.conversations(["Who runs lab 3?"], docs, "raft"),
                            [[f"{prefix} {c}" for c in cands[0]]], [0])
    shift = whole.scores[0][0] - r.scores[0][0]  # the reasoning's own log-likelihood
    assert shift < 0
    assert r.scores[0] == pytest.approx([s - shift for s in whole.scores[0]], abs=1e-3)
    assert r.correct == [1]  # after quoting Person 3, the model prefers Person 3
    with pytest.raises(ValueError, match="reply prefixes"):
        rank_candidates(lm, raft.conversations(["q?"], docs, "raft"), cands, [0], reply_prefixes=[])


def test_read_scores_a_quoting_reader_on_its_own_generation_as_rank_does(lm, kb):
    """`raft.read` scores the quoting reader on its generation's own KV cache: the same replies as
    `raft.ask`, and the same scores and token counts as the reasoning prefilled again (`raft.rank`),
    for replies the budget cut short (the marker fed with each candidate) and longer ones, in
    batches of unequal prompt lengths; another style is `raft.rank` with no generation."""
    from ragft.scoring import rank_after_generating

    qs = kb.sample("single", 5, 0)
    # each fact's own sentences, not its whole document: the same paths on shorter prompts (38 s -> 19 s)
    questions, docs = [q.test_text for q in qs], [[" ".join(q.gold_sentences)] for q in qs]
    cands = [kb.candidates(q, 3, 0) for q in qs]
    values, gold = [c for c, _ in cands], [g for _, g in cands]
    for budget in (5, 16):  # at 16, three of the five replies end before the budget, two are cut
        gen, r = raft.read(lm, questions, docs, "raft", values, gold, budget, batch_size=3)
        asked = raft.ask(lm, questions, docs, "raft", budget, batch_size=3)
        assert gen.texts == asked.texts and gen.completion_tokens == asked.completion_tokens
        again = raft.rank(lm, questions, docs, "raft", values, gold, reasoning=gen.texts)
        for mine, ref in zip(r.scores, again.scores):
            assert mine == pytest.approx(ref, abs=1e-3)
        assert r.prompt_tokens == again.prompt_tokens and r.seconds > 0
        if budget == 5:  # no reply reaches the marker: it is fed after the cache, with each candidate
            assert not any(map(raft.reached_marker, gen.texts))
        else:  # and replies that end before the budget, beside ones it cuts
            assert any(c < budget for c in gen.completion_tokens) and max(gen.completion_tokens) == budget
    with pytest.raises(ValueError, match="empty prefix"):
        rank_after_generating(lm, raft.conversations(questions[:1], docs[:1], "raft"), values[:1], gold[:1],
                              lambda reply: "", max_new_tokens=2)
    none, plain = raft.read(lm, questions, docs, "rag", values, gold, 40, batch_size=3)
    assert none is None and plain.scores == raft.rank(lm, questions, docs, "rag", values, gold).scores


def test_closest_sentence_and_kb_sources(kb):
    assert raft.closest_sentence("It rains. The gate is teal and tall. Cats sleep.", "teal gate") == "The gate is teal and tall."
    facts = kb.sample("single", 5, 0)
    chunks = [Hit(f"c{i}", d.doc_id, d.title, d.text, 0.0) for i, d in enumerate(kb.documents)]
    out = raft.kb_sources(facts, chunks, "test")
    assert len(out) == 5
    for s, q in zip(out, facts):
        assert s.question == q.test_text and all(any(g in o for o in s.oracles) for g in q.gold_sentences)


def test_benchmark_sources_keep_the_quote_that_names_the_answer():
    from ragft.corpus.benchmarks import BenchmarkItem, Passage

    a = Passage("a", "A", "Anna was born in Oslo. She sings.")
    b = Passage("b", "B", "Oslo is the capital of Norway, a country in the north of Europe.")
    it = BenchmarkItem("x", "In which country was Anna born?", ["Norway"], [a, b], {"a", "b"},
                       gold_sentences=["Anna was born in Oslo.", "Oslo is the capital of Norway, a country in the north of Europe."])
    (both,) = raft.benchmark_sources([it])
    (one,) = raft.benchmark_sources([it], max_quotes=1)
    assert len(both.quotes) == 2 and one.quotes == (it.gold_sentences[1],)  # names the answer, though longer
    it.answers = ["Anna"]
    assert raft.benchmark_sources([it], max_quotes=1)[0].quotes == (it.gold_sentences[0],)


def test_benchmark_sources_from_fixtures():
    hot = benchmarks.load_hotpotqa(str(FIXTURES))
    srcs = raft.benchmark_sources(hot)
    negatives = raft.own_distractors(hot)
    for s, it in zip(srcs, hot):
        assert len(s.oracles) == 2 and s.quotes and all(any(q in o for o in s.oracles) for q in s.quotes)
        assert not set(negatives[it.qid]) & set(s.oracles)
    pub = raft.one_document(benchmarks.load_pubmedqa(str(FIXTURES)))
    whole = [Hit(it.qid, it.passages[0].pid, "", it.passages[0].text, 0.0) for it in pub]  # one chunk per abstract
    (s, *_) = raft.chunk_sources(pub, whole)
    assert len(s.oracles) == 1 and s.quotes[0] in s.oracles[0] and s.answer in ("yes", "no", "maybe")


def test_teacher_quotes_are_always_verbatim(lm):
    s = raft.RaftSource("t", "Who runs lab 7?", "Person 7",
                        ("Lab 7 opened in 2019. Lab 7 is run by Person 7. It has a teal door.",))
    (out,), fallbacks = raft.teacher_quotes(lm, [s], max_new_tokens=24)
    assert out.quotes[0] in s.oracles[0] and fallbacks in (0, 1)


def test_chunk_sources_quote_the_sentence_closest_to_the_conclusion():
    pub = raft.one_document(benchmarks.load_pubmedqa(str(FIXTURES)))
    it = pub[0]
    text = it.passages[0].text
    half = len(text) // 2
    chunks = [Hit("a", it.passages[0].pid, "", text[:half], 0.0), Hit("b", it.passages[0].pid, "", text[half:], 0.0)]
    (s,) = raft.chunk_sources([it], chunks)
    assert s.oracles[0] in (text[:half], text[half:]) and s.quotes[0] in s.oracles[0]
    assert raft.chunk_sources([it], []) == []


def test_the_recipe_draws_its_training_questions_from_the_facts_not_tested(kb):
    from types import SimpleNamespace

    # every document of the knowledge base as one chunk: each fact's gold sentence sits whole in one
    chunks = [Hit(d.doc_id, d.doc_id, d.title, d.text, 1.0) for d in kb.documents]
    tested = {q.qid for q in kb.sample("single", 10, 0)}
    sources, others = raft.training_sources(kb, tested, chunks, 25, 0)
    assert len(sources) == 25 and not {s.qid for s in sources} & tested
    assert [s.qid for s in sources] == [q.qid for q in others][:25]  # the seeded order's first ones
    params = SimpleNamespace(n_distractors=2, p_oracle=1.0, seed=0, distractors="random")
    made = raft.records(sources, chunks, params)
    # P = 1: every oracle kept, beside 2 distractors; 0 distractors is 0, not the parameters' 2
    assert [len(r.documents) for r in made] == [len(s.oracles) + 2 for s in sources] and all(r.oracle_positions for r in made)
    assert [len(r.documents) for r in raft.records(sources, chunks, params, n_distractors=0)] == [len(s.oracles) for s in sources]
    assert raft.records(sources, chunks, params) == made  # one seed: the same records
    assert raft.hard_negatives(None, sources, params) is None  # random distractors need no retriever


def test_the_readers_raft_questions_are_the_rules_cloze_questions_with_their_sentence_as_quote():
    # a reader's RAFT (draw d2) trains on questions a rule writes from the documents, never a gold
    # question: each blanks a value of a sentence, quotes that sentence, and finds it in an oracle chunk
    from types import SimpleNamespace

    from ragft.corpus import build_kb, injection
    from ragft.corpus.kb import KBSizes

    kb = build_kb(2, KBSizes(n_series=3, models_per_series=2, n_people=6, n_sites=3, n_policies=2))
    chunks = [SimpleNamespace(text=d.text) for d in kb.documents]  # each document one chunk
    found = raft.cloze_sources(kb, chunks, 20, 1)
    assert len(found) == 20 and len({s.qid for s in found}) == 20
    assert found == raft.cloze_sources(kb, chunks, 20, 1)  # reproducible
    gold = {q.test_text for q in kb.questions} | {t for q in kb.questions for t in q.train_texts}
    for s in found:
        assert s.question.endswith("What goes in the blank?") and injection.BLANK in s.question and s.question not in gold
        assert s.quotes[0] == s.question[s.question.index(": ") + 2:-len(" What goes in the blank?")].replace(injection.BLANK, s.answer, 1)
        assert s.answer in s.quotes[0] and all(" ".join(s.quotes[0].split()) in " ".join(o.split()) for o in s.oracles)
    with pytest.raises(ValueError, match="cloze questions"):
        raft.cloze_sources(kb, chunks, 10 ** 6, 1)
