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
