"""The knowledge base: deterministic, well-formed, hard to guess, and with a real v2."""

import collections
import json

import pytest

from ragft.corpus import REFUSAL_ANSWER, STRUCTURED_FIELDS, KBSizes, build_kb
from ragft.metrics import normalize


def test_same_seed_same_corpus_and_other_seed_differs(kb):
    again = build_kb(0)
    assert [d.text for d in again.documents] == [d.text for d in kb.documents]
    assert [q.paraphrases for q in again.questions] == [q.paraphrases for q in kb.questions]
    assert [d.text for d in build_kb(1).documents] != [d.text for d in kb.documents]


def test_every_kind_present_with_unique_ids(kb):
    kinds = collections.Counter(q.kind for q in kb.questions)
    assert set(kinds) == {"single", "multihop", "unanswerable", "structured"}
    assert len({q.qid for q in kb.questions}) == len(kb.questions)
    assert len({d.doc_id for d in kb.documents}) == len(kb.documents)


def test_gold_sentence_is_in_gold_document_and_states_the_answer(kb):
    for q in kb.questions:
        if q.kind in ("single", "structured"):
            text = kb.doc(q.doc_ids[0]).text
            assert all(s in text for s in q.gold_sentences), q.qid
        if q.kind == "single":
            assert normalize(q.answer) in normalize(q.gold_sentences[0]), q.qid


def test_multihop_needs_two_documents_and_second_states_the_answer(kb):
    for q in kb.by_kind("multihop"):
        assert len(q.doc_ids) == 2 and q.doc_ids[0] != q.doc_ids[1]
        assert q.gold_sentences[0] in kb.doc(q.doc_ids[0]).text
        assert q.gold_sentences[1] in kb.doc(q.doc_ids[1]).text
        assert normalize(q.answer) in normalize(q.gold_sentences[1])


def test_unanswerable_questions_are_not_answered_by_their_related_document(kb):
    names = {d.entity for d in kb.documents}
    for q in kb.by_kind("unanswerable"):
        assert q.answer == REFUSAL_ANSWER and not q.doc_ids and q.related_doc_ids
        related = kb.doc(q.related_doc_ids[0]).text
        if q.entity in names:  # an undocumented attribute of a real product
            keyword = {"weight": f"The {q.entity} weighs", "code": "catalogue code"}[q.attribute]
            assert keyword not in related
        else:  # a look-alike product that does not exist
            assert q.entity not in related


def test_structured_answers_are_json_with_the_schema(kb):
    for q in kb.by_kind("structured"):
        obj = json.loads(q.answer)
        assert set(obj) == set(STRUCTURED_FIELDS) and obj == q.fields


def test_test_paraphrase_is_never_a_training_paraphrase(kb):
    for q in kb.questions:
        assert q.test_text not in q.train_texts
        assert len(set(q.paraphrases)) == len(q.paraphrases)
    # the held-out template varies between questions, so no template is test-only
    assert len({q.test_index for q in kb.by_kind("single")}) > 1


def test_look_alike_products_exist(kb):
    series = collections.Counter(d.entity.split()[0] for d in kb.documents if d.kind == "product")
    assert max(series.values()) >= 2


def test_answers_cannot_be_guessed_from_a_small_set(kb):
    by_attr = collections.defaultdict(list)
    for q in kb.by_kind("single"):
        by_attr[q.attribute].append(q.answer)
    for attr in ("price", "code", "extension", "launch", "designer"):
        answers = by_attr[attr]
        most_common_share = collections.Counter(answers).most_common(1)[0][1] / len(answers)
        assert most_common_share < 0.2, (attr, most_common_share)


def test_v2_changes_at_least_a_fifth_of_facts_and_adds_entities(kb, kb_v2):
    v1_single = {q.qid: q.answer for q in kb.by_kind("single")}
    common = [q for q in kb_v2.by_kind("single") if q.qid in v1_single]
    changed = [q for q in common if q.answer != v1_single[q.qid]]
    assert len(changed) / len(common) >= 0.20
    assert all(q.changed_in_v2 for q in changed)
    assert {q.qid for q in kb.questions if q.changed_in_v2} >= {q.qid for q in changed}
    assert len(kb_v2.documents) > len(kb.documents)
    assert {d.doc_id for d in kb.documents} <= {d.doc_id for d in kb_v2.documents}


@pytest.mark.parametrize("bad", [{"n_series": 0}, {"n_series": 999}, {"models_per_series": 9},
                                 {"n_paraphrases": 1}, {"v2_change_share": 0.1}, {"n_sites": "3"}])
def test_bad_sizes_are_refused_with_the_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        KBSizes(**bad)


def test_bad_version_is_refused():
    with pytest.raises(ValueError, match="version"):
        build_kb(0, version="v3")


def test_save_writes_jsonl(tmp_path, kb):
    kb.save(tmp_path)
    lines = (tmp_path / "questions.jsonl").read_text().splitlines()
    assert len(lines) == len(kb.questions) and json.loads(lines[0])["qid"] == kb.questions[0].qid


def test_questions_about_documents_groups_questions_by_document(kb):
    docs, questions = kb.questions_about_documents(10, seed=0)
    assert len(questions) == 10 and 1 <= len(docs) <= 10
    ids = {d.doc_id for d in docs}
    assert all(q.kind == "single" and q.doc_ids[0] in ids for q in questions)
    assert all(d.doc_id.startswith("product-") for d in docs)
    assert kb.questions_about_documents(10, seed=0)[1] == questions


def test_documents_are_drawn_among_the_richer_ones_and_give_every_fact_they_hold(kb):
    counts = collections.Counter(q.doc_ids[0] for q in kb.by_kind("single"))
    test = kb.documents_drawn(4, 0, min_facts=6)
    dev = kb.documents_drawn(2, 1, min_facts=6, exclude=tuple(test))
    assert test == kb.documents_drawn(4, 0, min_facts=6)  # the same seed draws the same documents
    assert not set(test) & set(dev) and all(counts[d] >= 6 for d in test + dev)
    facts = kb.facts_of(test)
    # every single fact of each drawn document, document by document
    assert len(facts) == sum(counts[d] for d in test) and [q.doc_ids[0] for q in facts] == sorted(
        (q.doc_ids[0] for q in facts), key=test.index)
    richer = sum(1 for c in counts.values() if c >= 6)
    with pytest.raises(ValueError, match=f"this knowledge base holds {richer}"):
        kb.documents_drawn(richer + 1, 0, min_facts=6)
