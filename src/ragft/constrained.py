"""Constrained decoding: generation that can only write what a JSON schema accepts.

A grammar logits processor (xgrammar, pinned in requirements.txt; it compiles the schema against
the tokenizer's vocabulary and runs on the CPU, offline) masks, at every step, each token that
cannot continue a record the schema accepts, and allows the stop token only once the record is
complete. The model still chooses every value; the grammar rules out everything else. Records are
compact (no free whitespace) and every string and integer is bounded, so a record has a worst-case
length (`max_record_tokens`): with at least that many new tokens the output always parses and fits
the schema.
"""

from __future__ import annotations

import json

from .generation import Generation, generate

MAX_STRING_CHARS = 40  # a product name is a few words; the bound makes every record finite
MAX_INT = 10_000_000  # prices and months are below this; it bounds an integer to 8 digits
_COMPILED: dict = {}  # (tokenizer folder and size, model vocabulary, schema) -> compiled grammar; compiling takes a second or two


def json_schema(fields: dict[str, type], max_string_chars: int = MAX_STRING_CHARS, max_int: int = MAX_INT) -> dict:
    """A JSON schema for a flat record of `fields` (name -> str or int), every field required, no
    other field allowed, strings and integers bounded."""
    kinds = {str: {"type": "string", "minLength": 1, "maxLength": max_string_chars},
             int: {"type": "integer", "minimum": 0, "maximum": max_int}}
    unknown = {k: t for k, t in fields.items() if t not in kinds}
    if unknown:
        raise ValueError(f"fields of type {sorted(t.__name__ for t in unknown.values())} are not supported: use str or int")
    return {"type": "object", "properties": {k: kinds[t] for k, t in fields.items()},
            "required": list(fields), "additionalProperties": False}


def max_record_tokens(schema: dict) -> int:
    """An upper bound on the tokens of one compact record plus the stop token: every character of a
    string value may be its own token (an escaped character counts 2), every key and separator too."""
    n = 2 + 1  # braces and the stop token
    for key, spec in schema["properties"].items():
        n += len(json.dumps(key)) + 2  # the key, ': ', ', '
        n += spec.get("maxLength", 0) * 2 + 2 if spec["type"] == "string" else len(str(spec.get("maximum", 10**18)))
    return n


def compiled_grammar(lm, schema: dict):
    """The schema compiled against the model's tokenizer (cached per tokenizer and schema)."""
    import xgrammar as xgr

    # by the tokenizer's folder and size, not its id(): a kernel that runs several chapters frees one
    # tokenizer and may build the next at the same address
    key = (lm.tokenizer.name_or_path, len(lm.tokenizer), lm.model.config.vocab_size, json.dumps(schema, sort_keys=True))
    if key not in _COMPILED:
        info = xgr.TokenizerInfo.from_huggingface(lm.tokenizer, vocab_size=lm.model.config.vocab_size,
                                                  stop_token_ids=[lm.tokenizer.eos_token_id])
        _COMPILED[key] = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
    return _COMPILED[key]


def generate_json(lm, conversations: list[list[dict]], schema: dict, max_new_tokens: int = 48,
                  batch_size: int = 16, desc: str = "constrained") -> Generation:
    """Greedy generation (batched, prefix-cached, as `generation.generate`) under the schema's
    grammar. A record cut off by max_new_tokens does not parse: give at least max_record_tokens."""
    import xgrammar as xgr

    grammar = compiled_grammar(lm, schema)
    return generate(lm, conversations, max_new_tokens, batch_size, desc=desc,
                    logits_processors=lambda: [xgr.contrib.hf.LogitsProcessor(grammar)])
