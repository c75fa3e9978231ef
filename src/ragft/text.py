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
NEAR_DUPLICATE = 0.8  # share of the shorter question's content words the other must hold to count as one question
# words that name another thing of the same kind: two questions that differ only in these (or in a number,
# or in a name) ask about two things, however much else they share
CONTRASTS = frozenset("north south east west northern southern eastern western left right upper lower inner outer "
                      "front rear back top bottom first second third last old new former latter primary secondary "
                      "spring summer autumn winter morning evening day night input output inbound outbound "
                      "minimum maximum min max before after".split())
SAME, ANOTHER_THING = "same", "another thing"


def _visible(text: str) -> str:
    """The text in Unicode's compatibility form with the invisible format characters (soft hyphen,
    zero-width space and joiners, word joiner, byte-order mark: category Cf) taken out, so that
    "pas\u00adsenger" and "passenger" are one word."""
    import unicodedata

    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")


def normal_form(question: str) -> str:
    """A question with case, punctuation, white space and invisible characters folded: "How heavy is
    widget 1?" and "how heavy is  wid\u00adget 1" have one normal form."""
    return " ".join(re.sub(r"[^\w\s]", " ", _visible(question).casefold()).split())


def content_words(question: str) -> frozenset[str]:
    return frozenset(w for w in normal_form(question).split() if w not in STOPWORDS)


def names(question: str) -> frozenset[str]:
    """The question's words written with a capital after its first word (folded): its proper names."""
    words = re.sub(r"[^\w\s]", " ", _visible(question)).split()
    return frozenset(w.casefold() for w in words[1:] if w[:1].isupper())


def question_key(question: str) -> tuple[str, frozenset[str], frozenset[str]]:
    """What `near_duplicate` compares, computed once per question: its normal form, content words and names."""
    return normal_form(question), content_words(question), names(question)


def near_duplicate(a: str | tuple, b: str | tuple, threshold: float = NEAR_DUPLICATE) -> tuple[str, tuple] | None:
    """Whether two questions (texts, or their `question_key`s) are one question in other clothes:
    (SAME, ()) for the same normal form, or where the other holds at least `threshold` of the shorter
    question's content words and the words they do not share are ordinary words (a changed word, a
    typo); (ANOTHER_THING, words) where they share that much but a word they do not share names
    another thing (a number, a proper name, north against south: CONTRASTS), so they ask about two
    things; None where they share less."""
    (na, wa, ca), (nb, wb, cb) = (question_key(q) if isinstance(q, str) else q for q in (a, b))
    if na == nb:
        return SAME, ()
    if not wa or not wb or len(wa & wb) / min(len(wa), len(wb)) < threshold:
        return None
    naming = tuple(sorted(w for w in wa ^ wb if any(ch.isdigit() for ch in w) or w in CONTRASTS or w in ca | cb))
    return (ANOTHER_THING, naming) if naming else (SAME, ())


def same_question(a: str | tuple, b: str | tuple, threshold: float = NEAR_DUPLICATE) -> bool:
    """One question in other clothes (`near_duplicate` says SAME)."""
    found = near_duplicate(a, b, threshold)
    return found is not None and found[0] == SAME
