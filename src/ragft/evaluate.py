"""Metrics and batched generation.

Answer metrics follow the SQuAD v1.1 evaluation script's normalisation (lower case, drop punctuation
and the articles a/an/the, fold white space). "contains" is the lenient score: a normalised gold
answer (or alias) appears inside the normalised prediction, which suits chatty small models.
"""

from __future__ import annotations

import json
import math
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize(prediction)
    return float(any(pred == normalize(a) for a in answers))


def f1(prediction: str, answers: list[str]) -> float:
    """Token F1, the best over the gold answers (SQuAD rules)."""
    pred_tokens = normalize(prediction).split()
    best = 0.0
    for a in answers:
        gold_tokens = normalize(a).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        same = sum(common.values())
        if same == 0:
            continue
        p, r = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * p * r / (p + r))
    return best


def contains(prediction: str, answers: list[str]) -> float:
    """1 when a normalised gold answer appears in the normalised prediction, on word boundaries."""
    pred = f" {normalize(prediction)} "
    return float(any(normalize(a) and f" {normalize(a)} " in pred for a in answers))


# A refusal says the information is missing; checked on the normalised text.
_REFUSAL = re.compile(
    r"\b(i dont know|i do not know|dont know|not known|unknown|no information|not mentioned|"
    r"not provided|not specified|not stated|not available|cannot answer|cant answer|unable to answer|"
    r"cannot find|cant find|not in (?:the )?(?:documents?|context|sources?)|does not (?:say|mention|state)|"
    r"doesnt (?:say|mention|state)|no relevant information|not sure)\b")


def is_refusal(prediction: str) -> bool:
    return bool(_REFUSAL.search(normalize(prediction)))


_JSON_BLOCK = re.compile(r"\{.*\}", re.DOTALL)


def parse_json(prediction: str) -> dict | None:
    """The first JSON object in the text (models often wrap it in prose or a code fence), or None."""
    match = _JSON_BLOCK.search(prediction)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def json_valid(prediction: str) -> float:
    return float(parse_json(prediction) is not None)


def schema_adherence(prediction: str, schema: dict[str, type]) -> float:
    """1 when the JSON object has exactly the schema's fields with the right types."""
    obj = parse_json(prediction)
    if obj is None or set(obj) != set(schema):
        return 0.0
    for key, typ in schema.items():
        value = obj[key]
        if typ is int and not (isinstance(value, int) and not isinstance(value, bool)):
            return 0.0
        if typ is str and not isinstance(value, str):
            return 0.0
    return 1.0


def fields_correct(prediction: str, gold: dict) -> float:
    """Share of the gold fields whose values the JSON object gets right."""
    obj = parse_json(prediction) or {}
    return sum(normalize(str(obj.get(k, ""))) == normalize(str(v)) for k, v in gold.items()) / len(gold)


# ---------------------------------------------------------------------------------------------
# Retrieval metrics: `ranked` is a list of document ids, best first; `relevant` a set of ids.


def recall_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    if not relevant:
        raise ValueError("recall@k needs at least one relevant id")
    return len(set(ranked[:k]) & relevant) / len(relevant)


def mrr(ranked: list[str], relevant: set[str]) -> float:
    for i, doc in enumerate(ranked, 1):
        if doc in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 1) for i, doc in enumerate(ranked[:k], 1) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


# ---------------------------------------------------------------------------------------------
# Scoring a set of answers


def score_answers(predictions: list[str], items: list) -> dict[str, float]:
    """Mean scores over QA items (objects with .answers and .kind). Unanswerable items count only
    towards refusal accuracy; answerable ones count towards the answer scores and false refusals."""
    answerable = [(p, it) for p, it in zip(predictions, items) if it.kind != "unanswerable"]
    unanswerable = [p for p, it in zip(predictions, items) if it.kind == "unanswerable"]
    out: dict[str, float] = {}
    if answerable:
        n = len(answerable)
        out["contains"] = sum(contains(p, it.answers) for p, it in answerable) / n
        out["em"] = sum(exact_match(p, it.answers) for p, it in answerable) / n
        out["f1"] = sum(f1(p, it.answers) for p, it in answerable) / n
        out["false_refusal"] = sum(is_refusal(p) for p, _ in answerable) / n
    if unanswerable:
        out["refusal_acc"] = sum(is_refusal(p) for p in unanswerable) / len(unanswerable)
    return out


# ---------------------------------------------------------------------------------------------
# Batched generation


@dataclass
class Generation:
    texts: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    seconds: float  # wall time for the whole batch set
    per_query_s: list[float] = field(default_factory=list)  # batch time shared among its queries

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(self.prompt_tokens) / max(1, len(self.prompt_tokens))

    @property
    def mean_completion_tokens(self) -> float:
        return sum(self.completion_tokens) / max(1, len(self.completion_tokens))


def generate(lm, conversations: list[list[dict]], max_new_tokens: int = 24, batch_size: int = 16,
             desc: str = "generating") -> Generation:
    """Greedy generation for chat conversations, batched with left padding.

    Prompts are sorted by length so each batch pads little, and restored to input order after.
    Token counts exclude padding: they are what an API would bill.
    """
    import torch

    from .progress import progress

    tok, model = lm.tokenizer, lm.model
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    too_long = [i for i, x in enumerate(ids) if len(x) + max_new_tokens > lm.context_window]
    if too_long:
        raise ValueError(f"{len(too_long)} prompt(s) exceed the context window of {lm.context_window} tokens "
                         f"(longest {max(len(ids[i]) for i in too_long)} + {max_new_tokens} new tokens)")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts, completion, per_query = [""] * len(ids), [0] * len(ids), [0.0] * len(ids)
    start = time.perf_counter()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in progress(batches, desc=desc):
        t0 = time.perf_counter()
        enc = tok.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(lm.device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        dt = (time.perf_counter() - t0) / len(batch)
        for row, i in enumerate(batch):
            tokens = new[row].tolist()
            if tok.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tok.eos_token_id) + 1]  # count the stop token, as APIs do
            completion[i] = len(tokens)
            texts[i] = tok.decode(tokens, skip_special_tokens=True).strip()
            per_query[i] = dt
    return Generation(texts, [len(x) for x in ids], completion, time.perf_counter() - start, per_query)


def generate_shared_prefix(lm, conversations: list[list[dict]], max_new_tokens: int = 16,
                           desc: str = "long context") -> tuple[Generation, float]:
    """Greedy generation for conversations that share a long common prefix (a haystack of documents
    before the question). The prefix is prefilled once and its KV cache reused per question, as a
    provider's prompt caching does; returns the generation and the prefix prefill seconds.
    Token counts are the full prompts, i.e. what an API without caching would bill."""
    import copy

    import torch

    from .progress import progress

    tok, model = lm.tokenizer, lm.model
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    longest = max(len(x) for x in ids)
    if longest + max_new_tokens > lm.context_window:
        raise ValueError(f"a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                         f"context window of {lm.context_window}")
    n_common = 0
    while all(len(x) > n_common + 1 and x[n_common] == ids[0][n_common] for x in ids):
        n_common += 1
    start = time.perf_counter()
    with torch.inference_mode():
        prefix = torch.tensor([ids[0][:n_common]], device=lm.device)
        cache = model(prefix, use_cache=True).past_key_values
    prefill_s = time.perf_counter() - start
    texts, completion, per_query = [], [], []
    for x in progress(ids, desc=desc):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(torch.tensor([x], device=lm.device), past_key_values=copy.deepcopy(cache),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        tokens = out[0, len(x):].tolist()
        if tok.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tok.eos_token_id) + 1]
        texts.append(tok.decode(tokens, skip_special_tokens=True).strip())
        completion.append(len(tokens))
        per_query.append(time.perf_counter() - t0 + prefill_s / len(ids))
    gen = Generation(texts, [len(x) for x in ids], completion, time.perf_counter() - start, per_query)
    return gen, prefill_s


def condition_row(name: str, gen: Generation, items: list, price_row: str, **extra) -> dict:
    """One row of a results table: scores, tokens per query, latency, cost per 1,000 queries."""
    from .costs import cost_per_1k_queries

    row = {"condition": name, "n": len(items), **score_answers(gen.texts, items),
           "prompt_tokens": gen.mean_prompt_tokens, "completion_tokens": gen.mean_completion_tokens,
           "latency_s": sum(gen.per_query_s) / max(1, len(gen.per_query_s)),
           "cost_per_1k_usd": cost_per_1k_queries(gen.mean_prompt_tokens, gen.mean_completion_tokens, price_row)}
    row.update(extra)
    return row
