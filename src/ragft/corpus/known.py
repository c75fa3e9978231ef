"""Facts the model already knows: NaturalQuestions-Open questions ranked like the knowledge base's.

Chapter 3 asks whether training on new facts changes the answers to facts the model knew before
(Gekhman et al. 2024). A fact "known" to the base model is a real-world question whose gold answer
the base model ranks first among look-alikes closed book, by the same candidate log-likelihood that
scores the knowledge base. Look-alikes are the answers of other questions that open with the same
question word (a person for "who", a date for "when", a place for "where", a number for "how
many"), so the gold is not found by its type alone. The questions are taken from the end of the NQ
file (chapter 2 reads its start), and which of them the model knows is decided on the base model,
before any training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..metrics import normalize

QUESTION_WORDS = ("how many", "who", "when", "where")  # "how many" before any one-word match
MAX_ANSWER_WORDS = 4  # short answers: the candidates of one question are alike in length


@dataclass(frozen=True)
class RankedQuestion:
    """A question with its candidate answers in a fixed order; `gold` indexes the right one."""

    qid: str
    text: str
    candidates: tuple[str, ...]
    gold: int


def question_word(text: str) -> str | None:
    low = text.lower()
    return next((w for w in QUESTION_WORDS if low.startswith(w + " ")), None)


def ranked_questions(items: list, n: int, k: int = 3, seed: int = 0) -> list[RankedQuestion]:
    """Up to n questions from the end of `items` (benchmark items with .qid, .question, .answers)
    with a short answer that the question does not already contain, each with its gold answer and k
    answers of other questions that open with the same question word, drawn from `seed`."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: ask for at least one question")
    pool: dict[str, list] = {}
    usable = []  # from the end of the file backwards
    for item in reversed(items):
        word, answer = question_word(item.question), item.answers[0] if item.answers else ""
        if word and answer and len(answer.split()) <= MAX_ANSWER_WORDS and normalize(answer) not in normalize(item.question):
            pool.setdefault(word, []).append(item)
            usable.append(item)
    chosen = usable[:n]
    rng = random.Random(seed)
    out = []
    for item in chosen:
        group = pool[question_word(item.question)]
        right = {normalize(a) for a in item.answers}
        others = sorted({o.answers[0] for o in group if normalize(o.answers[0]) not in right})
        if len(others) < k:
            continue  # too few questions of its kind to draw look-alikes from
        candidates = [item.answers[0], *rng.sample(others, k)]
        rng.shuffle(candidates)
        out.append(RankedQuestion(item.qid, item.question, tuple(candidates), candidates.index(item.answers[0])))
    return out
