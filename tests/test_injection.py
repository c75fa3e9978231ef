"""The training texts a reader could build from the documents (ragft.corpus.injection): documents
as they are, rewritten, and questions generated from them by a rule. Loads no model."""

import pytest

from ragft.corpus import KBSizes, build_kb
from ragft.corpus.injection import (BLANK, N_REWRITES, REWRITES, generated_questions, rewrite_sentence,
                                    rewritten_document, values)
from ragft.text import normal_form


@pytest.fixture(scope="module")
def small_kb():
    return build_kb(0, KBSizes(n_series=2, models_per_series=2, n_people=4, n_sites=2, n_policies=2))


def spans(sentence: str, skip: str = "") -> list[str]:
    return [sentence[a:b] for a, b in values(sentence, skip)]


@pytest.mark.parametrize("sentence, skip, found", [
    ("The Kestrin S50 sells for $4,387 per unit.", "Kestrin S50", ["$4,387"]),
    ("The Kestrin S50 was launched in September 2011.", "Kestrin S50", ["September 2011"]),
    ("Its shipping carton weighs 10.1 kg.", "", ["10.1 kg"]),
    ("Its catalogue code is KE-9541.", "", ["KE-9541"]),
    # "Every" opens the sentence and names nothing; the entity itself is never blanked
    ("Every unit of the Kestrin S50 is assembled at the Quarrington site.", "Kestrin S50", ["Quarrington"]),
    ("Repairs after the warranty ends are quoted within 5 working days.", "", ["5"]),
    # a job title in lower case is no value-like span: the rule misses it, as rules of its kind do
    ("Mirela Dimitrov works as product manager at Halvorsen Dynamics.", "Mirela Dimitrov", ["Halvorsen Dynamics"]),
    ("It sits beside the Kestrin S75 in the Kestrin line, which is sold separately.", "Kestrin S50",
     ["Kestrin S75", "Kestrin"]),
])
def test_value_spans_are_found_by_the_text_alone(sentence, skip, found):
    assert spans(sentence, skip) == found


def test_a_cloze_blanks_the_span_where_it_stands(small_kb):
    # "Kestrin" occurs twice in the sentence: its own span (the line) is blanked, not the first match
    doc = small_kb.doc("product-kestrin-s50")
    asked = {g.answer: g.question for g in generated_questions(doc)}
    assert asked["Kestrin"] == (f"{doc.title}: It sits beside the Kestrin S75 in the {BLANK} line, which is sold "
                                "separately. What goes in the blank?")
    assert asked["$4,387"] == f"{doc.title}: The Kestrin S50 sells for {BLANK} per unit. What goes in the blank?"


def test_generated_questions_never_use_a_test_template(small_kb):
    asked = {normal_form(q) for q in (p for q in small_kb.questions for p in q.paraphrases)}
    generated = [g for d in small_kb.documents for g in generated_questions(d)]
    assert generated and not any(normal_form(g.question) in asked for g in generated)
    # every single fact but the job titles is asked about, by its own value, from its own document
    covered = {(g.doc_id, g.answer) for g in generated}
    missed = {q.attribute for q in small_kb.by_kind("single") if (q.doc_ids[0], q.answer) not in covered}
    assert missed == {"role"}


def test_rewrites_restate_every_fact_and_keep_the_rest(small_kb):
    for doc in small_kb.documents:
        facts = [q for q in small_kb.by_kind("single") if q.doc_ids[0] == doc.doc_id]
        others = [s for s in doc.text.replace("\n\n", " ").split(". ") if not any(s in q.gold_sentences[0] for q in facts)]
        for variant in range(N_REWRITES):
            text = rewritten_document(small_kb, doc, variant)
            for q in facts:
                assert q.gold_sentences[0] not in text and rewrite_sentence(q, variant) in text and q.answer in text
            assert all(s.rstrip(".") in text for s in others)


def test_a_rewrite_is_the_template_with_the_fact(small_kb):
    q = next(q for q in small_kb.by_kind("single") if q.attribute == "designer")
    assert rewrite_sentence(q, 1) == f"{q.answer} designed the {q.entity}."
    # a person's job keeps what the sentence says after it (the company)
    role = next(q for q in small_kb.by_kind("single") if q.attribute == "role")
    company = role.gold_sentences[0].rstrip(".").split(" at ")[-1]
    assert rewrite_sentence(role, 0) == f"{role.entity} is employed as {role.answer} at {company}."
    assert all(len(t) == N_REWRITES for t in REWRITES.values())


def test_a_readers_text_is_cut_into_paragraphs_and_headings_before_sentences():
    """A hard-wrapped paragraph is one (its lines joined), a markdown heading a paragraph of its own
    without its marks, so no cloze question joins a heading to the sentence after it; a sentence that
    is a value and nothing else gives no question (its blank would have no context)."""
    from ragft.corpus.injection import cloze_questions, paragraphs

    text = "# The Ferrow mill\n\nIts wheel has 24\npaddles.\n## Staff\nThe miller is Oda Kestrel."
    assert paragraphs(text) == ["The Ferrow mill", "Its wheel has 24 paddles.", "Staff", "The miller is Oda Kestrel."]
    asked = cloze_questions("Mill", text)
    assert ("Mill: Its wheel has ___ paddles. What goes in the blank?", "24") in asked
    # "The" and "Its" open sentences; the heading "Staff" is its value alone, so no question asks it
    assert [v for _, v in asked] == ["Ferrow", "24", "Oda Kestrel"]


def test_a_readers_corpus_names_its_own_non_values():
    """A capitalised word the corpus also writes in lower case names no value ("Crew lockers" where it
    says "the crew"); one it never writes so stays a name."""
    from ragft.corpus.injection import not_names_of, values

    not_names = not_names_of(["Crew lockers are in the Pell building.", "Most of the crew sail."])
    assert "Crew" in not_names and "Pell" not in not_names and "Most" not in not_names
    s = "Crew lockers are in the Pell building."
    assert [s[a:b] for a, b in values(s, not_names=not_names)] == ["Pell"]
