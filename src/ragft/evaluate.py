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
    r"cannot find|cant find|not in (?:the )?(?:documents?|context|sources?)|"
    r"(?:does|do|did) not (?:say|mention|state|contain)|(?:doesnt|dont|didnt) (?:say|mention|state|contain)|"
    r"no relevant information|not sure)\b")


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
    seconds: float  # wall time for the whole call
    per_query_s: list[float] = field(default_factory=list)  # batch time shared among its queries
    shared_prefix_tokens: int = 0  # prompt tokens computed once and reused from the KV cache
    prefix_prefill_s: float = 0.0

    def subset(self, indices: list[int]) -> "Generation":
        """The same generation restricted to some queries (seconds shared out by query)."""
        return Generation([self.texts[i] for i in indices], [self.prompt_tokens[i] for i in indices],
                          [self.completion_tokens[i] for i in indices],
                          sum(self.per_query_s[i] for i in indices), [self.per_query_s[i] for i in indices],
                          self.shared_prefix_tokens, self.prefix_prefill_s)

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(self.prompt_tokens) / max(1, len(self.prompt_tokens))

    @property
    def mean_completion_tokens(self) -> float:
        return sum(self.completion_tokens) / max(1, len(self.completion_tokens))


MIN_SHARED_PREFIX = 16  # below this, caching the common prefix saves less than it costs


def _decode_completion(tok, tokens: list[int]) -> tuple[str, int]:
    """The answer text and its billed token count (up to and including the stop token, as APIs count)."""
    if tok.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tok.eos_token_id) + 1]
    return tok.decode(tokens, skip_special_tokens=True).strip(), len(tokens)


def _common_prefix_len(ids: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one token of its own."""
    n = 0
    while all(len(x) > n + 1 and x[n] == ids[0][n] for x in ids):
        n += 1
    return n


def generate(lm, conversations: list[list[dict]], max_new_tokens: int = 32, batch_size: int = 16,
             desc: str = "generating", reuse_prefix: bool = True) -> Generation:
    """Greedy generation for chat conversations, batched, with prompt caching.

    The token prefix every prompt shares (system prompt, few-shot examples, a haystack of documents)
    is prefilled once and its KV cache reused for every batch, as provider-side prompt caching does.
    Each batch repeats that cache and left-pads each prompt's own suffix *after* the prefix: the
    attention mask hides the pads and position ids follow the mask, so every row computes exactly
    prefix + its own tokens (checked against unbatched, uncached generation in the tests). With no
    shared prefix this is plain left padding. Prompts are sorted by length so batches pad little.
    Token counts exclude padding and count whole prompts: what an API without caching bills.
    """
    import copy

    import torch

    from .progress import progress

    tok, model = lm.tokenizer, lm.model
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    too_long = [i for i, x in enumerate(ids) if len(x) + max_new_tokens > lm.context_window]
    if too_long:
        raise ValueError(f"{len(too_long)} prompt(s) exceed the context window of {lm.context_window} tokens "
                         f"(longest {max(len(ids[i]) for i in too_long)} + {max_new_tokens} new tokens)")
    start = time.perf_counter()
    n_common = _common_prefix_len(ids) if reuse_prefix and len(ids) > 1 else 0
    if n_common < MIN_SHARED_PREFIX:
        n_common = 0
    prefix, cache = ids[0][:n_common], None
    if n_common:
        with torch.inference_mode():
            cache = model(torch.tensor([prefix], device=lm.device), use_cache=True).past_key_values
    prefill_s = time.perf_counter() - start
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts, completion, per_query = [""] * len(ids), [0] * len(ids), [0.0] * len(ids)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in progress(batches, desc=desc):
        t0 = time.perf_counter()
        suffixes = [ids[i][n_common:] for i in batch]
        width = max(len(x) for x in suffixes)
        rows = [prefix + [tok.pad_token_id] * (width - len(x)) + x for x in suffixes]
        mask = [[1] * n_common + [0] * (width - len(x)) + [1] * len(x) for x in suffixes]
        kwargs = {}
        if cache is not None:
            kwargs["past_key_values"] = copy.deepcopy(cache)
            kwargs["past_key_values"].batch_repeat_interleave(len(batch))
        with torch.inference_mode():
            out = model.generate(torch.tensor(rows, device=lm.device), attention_mask=torch.tensor(mask, device=lm.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, **kwargs)
        dt = (time.perf_counter() - t0 + prefill_s * len(batch) / len(ids)) / len(batch)
        for row, i in enumerate(batch):
            texts[i], completion[i] = _decode_completion(tok, out[row, n_common + width:].tolist())
            per_query[i] = dt
    return Generation(texts, [len(x) for x in ids], completion, time.perf_counter() - start, per_query,
                      n_common, prefill_s)


def timed(fn):
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def generate_streamed(lm, conversation: list[dict], max_new_tokens: int = 32) -> tuple[str, int, float, float]:
    """One conversation, greedy, token by token as a chat server streams it: (answer, prompt tokens,
    seconds to the first token, seconds in all). Time to first token is the prefill plus one step."""
    import torch

    tok, model = lm.tokenizer, lm.model
    prompt = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=lm.device)
    start = time.perf_counter()
    tokens, cache, step = [], None, ids
    with torch.inference_mode():
        for i in range(max_new_tokens):
            out = model(step, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
            if i == 0:
                ttft = time.perf_counter() - start
            tokens.append(nxt)
            if nxt == tok.eos_token_id:
                break
            step = torch.tensor([[nxt]], device=lm.device)
    text, _ = _decode_completion(tok, tokens)
    return text, ids.shape[1], ttft, time.perf_counter() - start


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion: honest error bars for small samples."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """95 % normal-approximation interval for a mean of scores in [0, 1] (such as per-question F1)."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return (max(0.0, mean - z * sd / math.sqrt(n)), min(1.0, mean + z * sd / math.sqrt(n)))


def condition_row(name: str, gen: Generation, items: list, price_row: str, **extra) -> dict:
    """One row of a results table: scores (with a 95 % interval on "contains"), tokens per query,
    latency, cost per 1,000 queries."""
    from .costs import cost_per_1k_queries

    scores = score_answers(gen.texts, items)
    n_answerable = sum(it.kind != "unanswerable" for it in items)
    if "contains" in scores:
        scores["contains_lo"], scores["contains_hi"] = wilson_interval(scores["contains"] * n_answerable, n_answerable)
    row = {"condition": name, "n": len(items), **scores,
           "prompt_tokens": gen.mean_prompt_tokens, "completion_tokens": gen.mean_completion_tokens,
           "latency_s": sum(gen.per_query_s) / max(1, len(gen.per_query_s)),
           "cost_per_1k_usd": cost_per_1k_queries(gen.mean_prompt_tokens, gen.mean_completion_tokens, price_row)}
    row.update(extra)
    return row
