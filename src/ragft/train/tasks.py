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

from ..corpus import build_kb, injection
from ..corpus.kb import STRUCTURED_FIELDS
from ..costs import cost_per_1k_queries
from ..metrics import fields_correct, json_valid, schema_adherence
from ..prompts import DSF_SYSTEM, STRUCTURED_SYSTEM_SHORT, build_messages
from ..text import sentences
from ..replay import replayable
from . import units
from .data import SFTExample, example
from .trainer import TrainConfig, TrainResult, train





def dsf_messages(text: str) -> list[dict]:
    return build_messages(text, system=DSF_SYSTEM)


def dsf_examples(questions: list, n_paraphrases: int | None = None) -> list[SFTExample]:
    """Closed-book fact examples: up to n_paraphrases training paraphrases per question (None: all)."""
    return [example(dsf_messages(text), q.answer) for q in questions for text in q.train_texts[:n_paraphrases]]


# The knowledge-injection arms a reader could build from the documents (ragft.corpus.injection), by
# name: what each trains on, and how many exposures per fact one epoch gives (a rewritten document
# comes in N_REWRITES variants, each stating every fact once)
INJECTION_ARMS = {"documents": 1, "rewritten": injection.N_REWRITES, "generated": 1}


def injection_documents(kb, facts: list) -> list:
    """The documents that hold the facts, each once, in the knowledge base's order."""
    wanted = {q.doc_ids[0] for q in facts}
    return [d for d in kb.documents if d.doc_id in wanted]


def injection_examples(kb, facts: list, arm: str) -> list[SFTExample]:
    """One epoch of an injection arm on the documents that hold the facts: each document recited from
    its title (documents: the loss on every token of it; rewritten: each of its N_REWRITES rewrites),
    or the rule's cloze questions about each document (generated), in chapter 3's closed-book prompt."""
    if arm not in INJECTION_ARMS:
        raise ValueError(f"injection arm {arm!r} is not one of {list(INJECTION_ARMS)}")
    docs = injection_documents(kb, facts)
    if arm == "generated":
        return [example(dsf_messages(g.question), g.answer) for d in docs for g in injection.generated_questions(d)]
    texts = [[d.text] if arm == "documents" else [injection.rewritten_document(kb, d, v) for v in range(injection.N_REWRITES)]
             for d in docs]
    return [example(recite_messages(d), t) for d, variants in zip(docs, texts) for t in variants]


def recite_messages(doc) -> list[dict]:
    return [{"role": "user", "content": injection.recite_prompt(doc)}]


def injection_config(params, arm: str, exposures: int, lr: float | None = None) -> TrainConfig:
    """An injection arm's run: `exposures` per fact (epochs = exposures / INJECTION_ARMS[arm]) at a
    constant rate after warm-up, as dsf_config, with room for a whole document."""
    per = INJECTION_ARMS[arm]
    if exposures % per:
        raise ValueError(f"{exposures} exposures per fact is not a whole number of epochs of the {arm} arm ({per} per epoch)")
    return lora_config(params, exposures // per, schedule="constant", warmup=params.warmup_steps, max_len=512,
                       **({"lr": lr} if lr else {}))


def lora_config(params, epochs: int, **overrides) -> TrainConfig:
    """The chapters' LoRA run from their parameters; overrides change a field (method, target, lr ...)."""
    base = dict(method="lora", rank=params.lora_rank, alpha=params.lora_alpha, lr=params.lora_lr, epochs=epochs,
                batch_size=params.train_batch_size, seed=params.seed, dtype=params.dtype, device=params.device)
    return TrainConfig(**{**base, **overrides})


def dsf_config(params, n_paraphrases: int, exposures: int, lr: float | None = None, method: str = "lora",
               seed: int | None = None) -> TrainConfig:
    """Chapter 3's closed-book fine-tune: `exposures` per fact (epochs = exposures / n_paraphrases) at a
    constant learning rate after a short warm-up, so that the model after any epoch is what a run of
    that length gives (the knowledge curve's checkpoints). `method` is a chapter 3 method name (lora,
    lora-attention, qlora, full); lr defaults to lora_lr."""
    if exposures % n_paraphrases:
        raise ValueError(f"{exposures} exposures per fact over {n_paraphrases} paraphrases is not a whole number of epochs")
    overrides = {"lora-attention": {"target": "attention"}, "qlora": {"method": "qlora"},
                 "full": {"method": "full"}}.get(method, {})
    return lora_config(params, exposures // n_paraphrases, schedule="constant", warmup=params.warmup_steps,
                       **overrides, **({"lr": lr} if lr else {}), **({"seed": seed} if seed is not None else {}))


def train_dsf(params, facts: list, n_paraphrases: int, exposures: int, lr: float | None = None, method: str = "lora",
              label: str | None = None, seed: int | None = None, snapshots: tuple[int, ...] = ()) -> units.Trained:
    """Chapter 3's closed-book fine-tune on the facts (dsf_config), saving the model after each epoch
    in `snapshots`. Chapters 4 and 5 call it with chapter 3's parameters, learning rate and facts, so
    the same model, config and data hash to the same unit (ragft.train.units): read, not retrained."""
    cfg = dsf_config(params, n_paraphrases, exposures, lr, method, seed)
    return units.train(params.model, dsf_examples(facts, n_paraphrases), cfg, label=label or f"dsf-p{n_paraphrases}",
                       snapshots=snapshots)


def structured_context(kb, question) -> str:
    """The sentences of the product's document about money and warranty: the two the record needs
    and their traps (a spare part's price, a repair time), so the input stays short (training cost
    grows with every token) and the task still needs reading, not copying the first number."""
    text = kb.doc(question.doc_ids[0]).text
    return " ".join(s for s in sentences(text) if "$" in s or "warrant" in s.lower())


def structured_messages(kb, question, text: str, system: str = STRUCTURED_SYSTEM_SHORT,
                        examples: list[tuple[str, str]] | None = None) -> list[dict]:
    return build_messages(text, system=system, passages=[structured_context(kb, question)], examples=examples)


def structured_examples(n: int, test_seed: int, kb_sizes=None, system: str = STRUCTURED_SYSTEM_SHORT,
                        first_seed: int | None = None) -> list[SFTExample]:
    """n training examples from worlds other than the test world (seeds from first_seed, by default
    the one after test_seed), in a
    fixed order that uses every product's first paraphrase before any product's second. Worlds
    draw names from the same pools, so products named like a test product are left out."""
    by_paraphrase: dict[int, list[SFTExample]] = {}
    for world, q in training_products(n, test_seed, kb_sizes, first_seed):
        for i, text in enumerate(q.paraphrases):
            by_paraphrase.setdefault(i, []).append(example(structured_messages(world, q, text, system), json.dumps(q.fields)))
    return [ex for i in sorted(by_paraphrase) for ex in by_paraphrase[i]][:n]


def lora_structured_name(size: int) -> str:
    """The JSON condition of a LoRA fine-tune on `size` structured_examples (chapters 3 and 6 read it)."""
    return f"LoRA on {size} examples, short instruction"


def training_products(n: int, test_seed: int, kb_sizes=None, first_seed: int | None = None) -> list[tuple]:
    """(world, product) pairs of the worlds structured_examples(n, ...) draws from, whole worlds,
    none named like a test product."""
    test_names = {q.entity for q in build_kb(test_seed, kb_sizes).by_kind("structured")}
    products, seed = [], test_seed + 1 if first_seed is None else first_seed
    while sum(len(q.paraphrases) for _, q in products) < n:
        world = build_kb(seed, kb_sizes)
        products += [(world, q) for q in world.by_kind("structured") if q.entity not in test_names]
        seed += 1
    return products


# Development products come from worlds far from the training worlds (test_seed + 1, ...) and the
# few-shot examples' (test_seed + 1000)
DEV_WORLDS_FROM = 2000


def structured_dev_products(n: int, test_seed: int, kb_sizes=None, most_examples: int = 0) -> list[tuple]:
    """n development products, as (world, product) pairs, for choosing the JSON fine-tune: from
    worlds seeded from test_seed + DEV_WORLDS_FROM, none named like a test product or like any
    product of the worlds the largest training set (`most_examples`) draws from, so they share no
    fact and no name with either. Asked their held-out phrasing, as the test products are."""
    avoid = {q.entity for q in build_kb(test_seed, kb_sizes).by_kind("structured")}
    avoid |= {q.entity for _, q in training_products(most_examples, test_seed, kb_sizes)} if most_examples else set()
    products, seed = [], test_seed + DEV_WORLDS_FROM
    while len(products) < n:
        if seed == test_seed + DEV_WORLDS_FROM + 100:
            raise ValueError(f"100 worlds hold {len(products)} products named unlike any test or training one: "
                             f"n_structured_dev={n} is too many")
        world = build_kb(seed, kb_sizes)
        fresh = [(world, q) for q in world.by_kind("structured") if q.entity not in avoid]
        avoid |= {q.entity for _, q in fresh}  # one product per name
        products += fresh
        seed += 1
    return products[:n]


def general_texts(n_chars: int = 6000) -> dict[str, str]:
    """Two kinds of English prose no fine-tune here sees, n_chars of each, by name: Python's help
    topics (a language reference) and the standard library's module docstrings (library manuals)."""
    return {"help topics": general_text(n_chars), "module docs": module_docs_text(n_chars)}


def module_docs_text(n_chars: int = 6000) -> str:
    """The docstrings of standard-library modules that ship with Python, in a fixed order."""
    import importlib
    import inspect

    out = []
    for name in ("argparse", "logging", "unittest", "email", "json", "pickle", "textwrap", "heapq", "bisect",
                 "calendar", "difflib", "sched", "queue", "string", "shlex", "gettext", "locale", "ftplib"):
        doc = inspect.getdoc(importlib.import_module(name))
        if doc:
            out.append(doc)
        if sum(map(len, out)) >= n_chars:
            break
    return "\n\n".join(out)[:n_chars]


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


@replayable("perplexity_probe")
def perplexity_probe(lm, text: str, window: int = 512) -> tuple[float, list[float]]:
    """Token-level perplexity of `text` under the model, in non-overlapping windows, and the negative
    log-likelihood of each predicted token in text order, from the same forward passes (so the
    per-token values are outcomes of exactly the probe the perplexity summarises)."""
    import torch
    import torch.nn.functional as F

    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0].to(lm.device)
    total, count, token_nll = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window][None, :]
            if chunk.shape[1] < 2:
                break
            out = lm.model(input_ids=chunk, labels=chunk)
            n = chunk.shape[1] - 1
            total += float(out.loss) * n
            count += n
            token_nll += F.cross_entropy(out.logits[0, :-1].float(), chunk[0, 1:], reduction="none").tolist()
    return math.exp(total / count), token_nll


def perplexity(lm, text: str, window: int = 512) -> float:
    """Token-level perplexity of `text` under the model, in non-overlapping windows."""
    return perplexity_probe(lm, text, window)[0]


def structured_row(name: str, gen, questions: list, price_row: str, **extra) -> dict:
    """JSON validity, schema adherence and field accuracy of structured answers, with tokens and cost."""
    n = len(questions)
    return {"condition": name, "n": n,
            "json_valid": sum(map(json_valid, gen.texts)) / n,
            "schema_adherence": sum(schema_adherence(t, STRUCTURED_FIELDS) for t in gen.texts) / n,
            "fields_correct": sum(fields_correct(t, q.fields) for t, q in zip(gen.texts, questions)) / n,
            "prompt_tokens": gen.mean_prompt_tokens, "completion_tokens": gen.mean_completion_tokens,
            "cost_per_1k_usd": cost_per_1k_queries(gen.mean_prompt_tokens, gen.mean_completion_tokens, price_row),
            **extra}
