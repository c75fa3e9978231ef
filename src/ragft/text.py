"""Plain-text helpers shared by the chapters: white space folded, sentences split (one of each)."""

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
