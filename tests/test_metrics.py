"""Metrics against hand-computed values (SQuAD rules)."""

import pytest

from ragft import metrics as ev


def test_normalize_follows_squad():
    assert ev.normalize("The  Cat, sat!") == "cat sat"
    assert ev.normalize("An apple a day") == "apple day"


def test_exact_match_and_f1():
    assert ev.exact_match("the Eiffel Tower", ["Eiffel Tower"]) == 1.0
    assert ev.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred {eiffel}, gold {eiffel, tower}: p=1, r=0.5, F1=2/3
    assert ev.f1("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    assert ev.f1("Paris", ["Eiffel Tower", "Paris"]) == 1.0
    assert ev.f1("", ["x"]) == 0.0


@pytest.mark.parametrize("reply, short", [
    ("The answer is: 6 months.", "6 months"),  # a lead-in and a full stop
    ("The document states it. So, the answer is: Jarek Sadowski", "Jarek Sadowski"),  # the last lead-in
    ("##begin_quote##Built at Quarrington.##end_quote##\n<ANSWER>: Quarrington", "Quarrington"),  # RAFT's marker
    ("the north gate [2]", "the north gate"),  # a citation
    ('Answer: "Paris"', "Paris"),
    ("1 February 2021.\nIt came into force then.", "1 February 2021"),  # the first line
    ("St. Louis, Missouri. It lies on the river.", "St. Louis, Missouri"),  # an abbreviation ends no sentence
    ("It costs $2.5 million. Another sentence.", "It costs $2.5 million"),  # a whole sentence stays one
    ("The answer is", "The answer is"),  # a lead-in with nothing after it is left alone
])
def test_short_answer_one_rule_for_every_reader(reply, short):
    assert ev.short_answer(reply) == short


def test_em_and_f1_score_the_short_answer_and_contains_the_reply():
    class Item:
        kind, answers = "single", ["6 months"]

    scores = ev.score_answers(["The answer is: 6 months.", "The warranty is 6 months long, as stated."], [Item, Item])
    assert scores["em"] == 0.5 and scores["contains"] == 1.0
    assert scores["f1"] == pytest.approx((1 + 2 * (2 / 7) * 1 / (2 / 7 + 1)) / 2)
    assert scores["wordy"] == 0.5  # the sentence is 7 words for a 2-word answer; "6 months" is not wordy
    assert ev.wordy("about 6 months in all", ["6 months"]) == 0.0  # 3 words more: still a phrase


def test_contains_uses_word_boundaries():
    assert ev.contains("It costs $1,266 per unit.", ["$1,266"]) == 1.0
    assert ev.contains("It costs 12,660 dollars", ["1266"]) == 0.0
    assert ev.contains("launched in April 2021", ["April 2021"]) == 1.0
    assert ev.contains("anything", [""]) == 0.0


@pytest.mark.parametrize("text", ["I don't know.", "The documents do not mention it.", "There is no information about that.",
                                  "Sorry, I cannot answer this."])
def test_refusals_detected(text):
    assert ev.is_refusal(text)


@pytest.mark.parametrize("text", ["The price is $1,266.", "It is known as the X2.", "Ilse Marrow"])
def test_answers_are_not_refusals(text):
    assert not ev.is_refusal(text)


def test_json_validity_and_schema():
    schema = {"name": str, "price_usd": int}
    good = 'Here: ```json\n{"name": "Corvane X2", "price_usd": 1249}\n```'
    assert ev.json_valid(good) == 1.0 and ev.schema_adherence(good, schema) == 1.0
    assert ev.schema_adherence('{"name": "X", "price_usd": "1249"}', schema) == 0.0  # wrong type
    assert ev.schema_adherence('{"name": "X"}', schema) == 0.0  # missing field
    assert ev.schema_adherence('{"name": "X", "price_usd": true}', schema) == 0.0  # bool is not int
    assert ev.json_valid("{not json}") == 0.0 and ev.json_valid("[1, 2]") == 0.0
    assert ev.fields_correct('{"name": "corvane x2", "price_usd": 1}', {"name": "Corvane X2", "price_usd": 1249}) == 0.5


class _Item:
    def __init__(self, answers, kind="single"):
        self.answers, self.kind = answers, kind


def test_score_answers_splits_answerable_and_unanswerable():
    items = [_Item(["Paris"]), _Item(["Rome"]), _Item(["I don't know"], "unanswerable")]
    scores = ev.score_answers(["It is Paris.", "I don't know", "No information."], items)
    assert scores["contains"] == 0.5 and scores["false_refusal"] == 0.5 and scores["refusal_acc"] == 1.0


def test_generation_subset_keeps_order():
    from ragft.generation import Generation

    g = Generation(["a", "b", "c"], [1, 2, 3], [4, 5, 6], 3.0, [1.0, 1.0, 1.0])
    s = g.subset([2, 0])
    assert s.texts == ["c", "a"] and s.prompt_tokens == [3, 1] and s.seconds == 2.0


def test_join_words_names_a_list_as_a_sentence_does():
    from ragft.report import join_words

    assert [join_words(w) for w in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a and b", "a, b and c"]


def test_hotpotqa_f1_is_the_official_scripts():
    """hotpot_evaluate_v1.py: a yes/no/noanswer prediction or gold scores 0 unless both are the same
    word; otherwise SQuAD's token F1 (best over the gold answers)."""
    from ragft.metrics import f1, hotpotqa_f1

    assert f1("yes it is", ["yes"]) == pytest.approx(0.5) and hotpotqa_f1("yes it is", ["yes"]) == 0.0
    assert hotpotqa_f1("no", ["Paris"]) == 0.0 and f1("no", ["Paris"]) == 0.0
    assert hotpotqa_f1("No.", ["no"]) == 1.0 and hotpotqa_f1("noanswer", ["noanswer"]) == 1.0
    assert hotpotqa_f1("the city of Paris", ["Paris", "Paris, France"]) == f1("the city of Paris", ["Paris", "Paris, France"])
    assert hotpotqa_f1("anything", []) == 0.0
