"""Plain-text helpers shared by the chapters: white space folded, sentences split, questions compared
(one of each)."""

from __future__ import annotations

import re

# a sentence ends at . ! or ? followed by white space and a capital, a digit, a quote or a bracket
# (so "$1.5 million" and "e.g. this" stay whole)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def flat(text: str) -> str:
    """The text with every run of white space (line breaks included) folded to one space."""
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(flat(text)) if s.strip()]


# Words that carry no fact: two questions that differ only in these (or in case, punctuation and white
# space, or in word order) ask the same thing
STOPWORDS = frozenset("a an the is are was were be been of to in on at for by with from what which who whom whose "
                      "when where how why does do did it its this that these those and or please tell me us".split())
NEAR_DUPLICATE = 0.8  # share of content words two questions must share (Jaccard) to count as one question


def normal_form(question: str) -> str:
    """A question with case, punctuation and white space folded: "How heavy is  widget 1?" and
    "how heavy is widget 1" have one normal form."""
    return " ".join(re.sub(r"[^\w\s]", " ", question.casefold()).split())


def content_words(question: str) -> frozenset[str]:
    return frozenset(w for w in normal_form(question).split() if w not in STOPWORDS)


def question_key(question: str) -> tuple[str, frozenset[str]]:
    """What `same_question` compares, computed once per question: its normal form and content words."""
    return normal_form(question), content_words(question)


def same_question(a: str | tuple, b: str | tuple, threshold: float = NEAR_DUPLICATE) -> bool:
    """Whether two questions (texts, or their `question_key`s) are one question in other clothes: the
    same normal form, or content words that overlap by at least `threshold` (Jaccard) where every word
    they do not share is free of digits (so "widget 1" and "widget 2" stay two questions, whatever
    else they share)."""
    (na, wa), (nb, wb) = (question_key(q) if isinstance(q, str) else q for q in (a, b))
    if na == nb:
        return True
    if not wa or not wb or any(any(ch.isdigit() for ch in w) for w in wa ^ wb):
        return False
    return len(wa & wb) / len(wa | wb) >= threshold
