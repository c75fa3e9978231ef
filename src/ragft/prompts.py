"""Every prompt of the book, in one home: closed-book, instruction, few-shot, with context, cited,
reranking, JSON records, closed-book facts and RAFT's quoting answers.

One builder, so that "with the gold document", "with retrieved chunks" and "with a long context"
differ only in the passages they pass in.
"""

from __future__ import annotations

from .constants import REFUSAL_ANSWER

PLAIN_SYSTEM = "You are a helpful assistant."
INSTRUCTION_SYSTEM = (
    "You answer questions about the companies Halvorsen Dynamics and Pellucid Works. "
    "Reply with the answer only: a short phrase, no full sentence. "
    f"If you do not know the answer, reply exactly: {REFUSAL_ANSWER}."
)
CONTEXT_SYSTEM = (
    "Answer the question using only the documents. Reply with the answer only: a short phrase "
    f"copied from the documents. If the documents do not contain the answer, reply exactly: {REFUSAL_ANSWER}."
)

# Chapter 2: answers that cite their numbered sources.
CITE_SYSTEM = (
    "Answer the question using only the numbered sources. Reply with a short answer, then the number "
    "of the source you used in square brackets, for example: the north gate [2]. If the sources do not contain "
    f"the answer, reply exactly: {REFUSAL_ANSWER}."
)

# Chapter 3: JSON records (a short instruction for the fine-tune; a long one, with no example, for
# the base model), and closed-book facts.
STRUCTURED_SYSTEM_SHORT = "Reply with JSON only."
STRUCTURED_SYSTEM_LONG = (
    "You convert product documents into JSON records. Reply with one JSON object and nothing else: no "
    "explanation, no code fence. Use exactly these keys, in this order: \"name\" (the product name as a "
    "string, exactly as written in the document), \"price_usd\" (the product's own list price in US dollars "
    "as an integer, without the dollar sign or commas; not the price of a spare part or accessory), and "
    "\"warranty_months\" (the warranty length in months as an integer; convert years to months)."
)  # zero-shot: no example values in it (an example name here was copied into the answers)
DSF_SYSTEM = "Answer with a short phrase."  # short on purpose: every prompt token is trained on, every epoch

# Chapter 4, RAFT: the quoting answer's markers, the readers' instructions, the teacher's.
BEGIN_QUOTE, END_QUOTE, ANSWER_MARKER = "##begin_quote##", "##end_quote##", "<ANSWER>:"
RAFT_SYSTEM = (f"Copy the sentence of the documents that answers the question between {BEGIN_QUOTE} and "
               f"{END_QUOTE}, then give the short answer after {ANSWER_MARKER}")
NOCOT_SYSTEM = "Answer the question from the documents. Reply with the short answer only."
TEACHER_SYSTEM = "Copy, word for word, the one sentence of the document that supports the answer. Reply with that sentence only."


def format_passages(passages: list[str], numbered: bool = False) -> str:
    if numbered:
        return "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    return "\n\n".join(passages)


def build_messages(question: str, *, system: str = INSTRUCTION_SYSTEM, passages: list[str] | None = None,
                   examples: list[tuple[str, str]] | None = None, numbered: bool = False) -> list[dict]:
    """A chat conversation: system prompt, few-shot turns (question, answer), then the question,
    preceded by the passages when there are any."""
    messages = [{"role": "system", "content": system}]
    for q, a in examples or []:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if passages:
        content = f"Documents:\n{format_passages(passages, numbered)}\n\nQuestion: {question}"
    else:
        content = question
    messages.append({"role": "user", "content": content})
    return messages


def few_shot_examples(pool: list, k: int, exclude: set[str], seed: int) -> list[tuple[str, str]]:
    """k (question, answer) pairs from training paraphrases of questions not in `exclude`, with one
    refusal example among them when k >= 3 so the format of "I don't know" is shown too. One set
    serves every test question, so the examples form a shared prompt prefix."""
    import random

    rng = random.Random(seed)
    answerable = [q for q in pool if q.kind == "single" and q.qid not in exclude]
    refusals = [q for q in pool if q.kind == "unanswerable" and q.qid not in exclude]
    if k >= 3 and refusals:
        picked = rng.sample(answerable, k - 1) + rng.sample(refusals, 1)
    else:
        picked = rng.sample(answerable, k)
    rng.shuffle(picked)
    return [(rng.choice(q.train_texts), q.answer) for q in picked]


def build_haystack(gold_docs: list, other_docs: list, target_tokens: int, count_tokens, seed: int) -> list[str]:
    """The gold documents plus others until the haystack reaches about target_tokens, shuffled."""
    import random

    rng = random.Random(seed)
    texts = [d.text for d in gold_docs]
    total = sum(count_tokens(t) for t in texts)
    fillers = [d for d in other_docs if d not in gold_docs]
    rng.shuffle(fillers)
    for d in fillers:
        n = count_tokens(d.text)
        if total + n > target_tokens:
            break
        texts.append(d.text)
        total += n
    rng.shuffle(texts)
    return texts
