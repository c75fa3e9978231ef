"""Constrained decoding (ragft.constrained): the schema it builds, its length bound, and, on the real
offline model, output that always parses and fits the schema, whatever the prompt asks for."""

import json

import pytest

from ragft import constrained, metrics, prompts
from ragft.corpus.kb import STRUCTURED_FIELDS
from ragft.generation import generate
from ragft.train import tasks


def test_json_schema_requires_every_field_and_bounds_every_value():
    schema = constrained.json_schema(STRUCTURED_FIELDS, max_string_chars=12, max_int=999)
    assert schema["required"] == list(STRUCTURED_FIELDS) and schema["additionalProperties"] is False
    assert schema["properties"]["name"] == {"type": "string", "minLength": 1, "maxLength": 12}
    assert schema["properties"]["price_usd"] == {"type": "integer", "minimum": 0, "maximum": 999}
    with pytest.raises(ValueError, match="float"):
        constrained.json_schema({"weight": float})


def test_max_record_tokens_bounds_the_longest_record(lm):
    schema = constrained.json_schema(STRUCTURED_FIELDS, max_string_chars=12, max_int=999)
    longest = json.dumps({"name": "\\" * 12, "price_usd": 999, "warranty_months": 999})  # escapes double it
    assert len(lm.tokenizer(longest, add_special_tokens=False)["input_ids"]) + 1 <= constrained.max_record_tokens(schema)


def test_constrained_output_always_parses_and_fits_the_schema(lm, kb):
    schema = constrained.json_schema(STRUCTURED_FIELDS)
    products = kb.by_kind("structured")[:3]
    conversations = [tasks.structured_messages(kb, q, q.test_text) for q in products]
    # Prompts that ask for anything but JSON: the grammar still decides the form.
    conversations += [prompts.build_messages("Write a short poem about the sea."),
                      prompts.build_messages("What is 2 + 2?", system="Answer in French, in one sentence.")]
    # one batch of all five: a batch of four and one of one would decode the longest record twice
    gen = constrained.generate_json(lm, conversations, schema, constrained.max_record_tokens(schema), batch_size=5)
    assert len(gen.texts) == len(conversations)
    for text in gen.texts:
        record = json.loads(text)  # the whole answer is the record: no prose, no code fence
        assert list(record) == list(STRUCTURED_FIELDS), text
        assert metrics.schema_adherence(text, STRUCTURED_FIELDS) == 1.0, text
    assert sum(metrics.fields_correct(t, q.fields) for t, q in zip(gen.texts, products)) > 0  # it reads the document
    free = generate(lm, conversations[3:], 24, batch_size=4)  # without the grammar, no JSON
    assert not any(metrics.json_valid(t) for t in free.texts)


def test_each_batch_gets_its_own_logits_processors(lm):
    """A grammar's matchers hold per-row state, so `generate` asks `logits_processors` for a fresh list
    for each batch: three prompts in batches of 2 and 1 meet two processors, each seeing one batch."""
    seen = []

    class Probe:
        def __init__(self):
            self.rows = []
            seen.append(self)

        def __call__(self, input_ids, scores):
            self.rows.append(scores.shape[0])
            return scores

    conversations = [prompts.build_messages(q) for q in ("Hi?", "Why is the sky blue?", "Name a colour.")]
    generate(lm, conversations, 2, batch_size=2, logits_processors=lambda: [Probe()])
    assert sorted(p.rows for p in seen) == [[1, 1], [2, 2]]  # two tokens a row, one batch each
