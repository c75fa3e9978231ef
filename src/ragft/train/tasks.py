"""The fine-tuning tasks of the book, built from the knowledge base.

- Knowledge (DSF, closed book): the knowledge base's facts as question -> short answer, trained on
  the training paraphrases; tested on the held-out paraphrase (generalisation) and on a trained
  paraphrase (memorisation).
- Behaviour (structured output): a product document in the prompt and a request for JSON with
  fixed fields. Training examples come from other worlds (other knowledge-base seeds), so the test
  products are never trained on: what can be learnt is the format, not the facts.
- Forgetting: perplexity on English text no fine-tune sees (Python's own help topics).
"""

from __future__ import annotations

import json
import math

from ..corpus import build_kb
from ..prompts import CONTEXT_SYSTEM, INSTRUCTION_SYSTEM, build_messages
from .data import SFTExample, example

STRUCTURED_SYSTEM_SHORT = "Reply with JSON only."
STRUCTURED_SYSTEM_LONG = (
    "You convert product documents into JSON records. Reply with one JSON object and nothing else: no "
    "explanation, no code fence. Use exactly these keys, in this order: \"name\" (the product name as a "
    "string, exactly as written in the document), \"price_usd\" (the product's own list price in US dollars "
    "as an integer, without the dollar sign or commas; not the price of a spare part or accessory), and "
    "\"warranty_months\" (the warranty length in months as an integer; convert years to months). Example: "
    '{"name": "Quillon A7", "price_usd": 1250, "warranty_months": 24}'
)


def dsf_examples(questions: list, n_paraphrases: int | None = None) -> list[SFTExample]:
    """Closed-book fact examples: up to n_paraphrases training paraphrases per question (None: all)."""
    return [example(build_messages(text, system=INSTRUCTION_SYSTEM), q.answer)
            for q in questions for text in q.train_texts[:n_paraphrases]]


def structured_messages(question_text: str, document_text: str, system: str = STRUCTURED_SYSTEM_SHORT) -> list[dict]:
    return build_messages(question_text, system=system, passages=[document_text])


def structured_test_items(kb, n: int, seed: int) -> list:
    """The knowledge base's structured questions (held-out paraphrase) with their product document."""
    return kb.sample("structured", n, seed)


def structured_examples(n: int, exclude_seed: int, kb_sizes=None, system: str = STRUCTURED_SYSTEM_SHORT) -> list[SFTExample]:
    """n training examples from worlds other than the test world, every paraphrase used, in a fixed order."""
    out, seed = [], exclude_seed + 1
    while len(out) < n:
        world = build_kb(seed, kb_sizes)
        for q in world.by_kind("structured"):
            doc = world.doc(q.doc_ids[0])
            for text in q.paraphrases:
                out.append(example(structured_messages(text, doc.text, system), json.dumps(q.fields)))
        seed += 1
    return _spread(out, n)


def _spread(pool: list, n: int) -> list:
    """n items taken evenly across the pool (every product before a second paraphrase of any)."""
    by_paraphrase = [pool[i::4] for i in range(4)]
    flat = [x for group in by_paraphrase for x in group]
    return flat[:n]


def general_text(n_chars: int = 6000) -> str:
    """English prose no fine-tune here sees: the start of Python's help topics, which ship with Python."""
    from pydoc_data.topics import topics

    text, out = "", []
    for key in sorted(topics):
        out.append(topics[key])
        text = "\n\n".join(out)
        if len(text) >= n_chars:
            break
    return text[:n_chars]


def perplexity(lm, text: str, window: int = 512) -> float:
    """Token-level perplexity of `text` under the model, in non-overlapping windows."""
    import torch

    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0].to(lm.device)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window][None, :]
            if chunk.shape[1] < 2:
                break
            out = lm.model(input_ids=chunk, labels=chunk)
            n = chunk.shape[1] - 1
            total += float(out.loss) * n
            count += n
    return math.exp(total / count)
