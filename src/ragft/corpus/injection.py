"""Knowledge injection as a reader would do it: the training texts a practitioner can build from the
documents alone, beside the gold questions (an upper bound no reader has).

- documents as they are: each document, recited from its title (the loss on every token of it);
- documents rewritten: each document with every sentence that states a fact restated by a template of
  REWRITES (the same facts in other words; the other sentences as they are), one rewrite per variant;
- questions generated from the documents: a rule (cloze) that blanks each value-like span of each
  sentence (a sum of money, a date, a number, a code, a capitalised name) and asks for it; it reads
  the text only, so it asks about every value, asked later or not, and misses the values no rule of
  its kind finds (a job title in lower case). Never the test questions' templates.

Every text is built from the knowledge base's documents and questions; nothing here loads a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..text import sentences

# The document recited from its title: the prompt the documents arms train on (chapter 8 recites the
# reader's documents from their titles too, in its own words)
RECITE = "Recite the document {title}."
# A generated question: the sentence with the value blanked, and the request
CLOZE = "{title}: {sentence} What goes in the blank?"
BLANK = "___"

# Three rewrites of each fact's sentence, by attribute: {name} the entity, {v} the answer text, {rest}
# what the document's sentence says after the value (a person's company). Written for this book; none
# copies a question template of the knowledge base.
REWRITES = {
    "designer": ("The designer of the {name} is {v}.", "{v} designed the {name}.", "The {name} is the work of {v}."),
    "site": ("The {name} is built at the {v} site.", "Assembly of the {name} takes place at the {v} site.",
             "The {v} site is where the {name} is made."),
    "launch": ("The {name} reached the market in {v}.", "The launch of the {name} came in {v}.",
               "{v} saw the {name} launched."),
    "price": ("One {name} costs {v}.", "The list price of the {name} is {v}.", "A single {name} is priced at {v}."),
    "warranty": ("The {name} carries a {v} warranty.", "Buyers of the {name} get {v} of warranty cover.",
                 "The warranty on the {name} lasts {v}."),
    "weight": ("The {name} has a weight of {v}.", "A {name} tips the scales at {v}.", "The mass of the {name} is {v}."),
    "code": ("The {name} is catalogued as {v}.", "{v} is the catalogue code of the {name}.",
             "In the catalogue, the {name} appears under {v}."),
    "role": ("{name} is employed as {v}{rest}.", "The job of {name} is {v}{rest}.", "{name} holds the post of {v}{rest}."),
    "person_site": ("{name} works out of the {v} site.", "The {v} site is the base of {name}.",
                    "{name} has a desk at the {v} site."),
    "joined": ("{name} has been with the company since {v}.", "{name} started at the company in {v}.",
               "In {v}, {name} became an employee."),
    "extension": ("The phone extension of {name} is {v}.", "Dial extension {v} to reach {name}.",
                  "{name} answers the phone on extension {v}."),
    "manager": ("{v} manages the {name} site.", "The manager of the {name} site is {v}.", "The {name} site is run by {v}."),
    "opened": ("The {name} site has been open since {v}.", "The {name} site first opened in {v}.",
               "In {v}, the {name} site opened its doors."),
    "headcount": ("The {name} site has {v} employees.", "{v} people work at the {name} site.",
                  "The staff of the {name} site numbers {v}."),
    "window": ("Claims under the {name} are due within {v}.", "The {name} gives {v} to make a claim.",
               "A claim under the {name} has to be filed within {v}."),
    "limit": ("Each claim under the {name} is capped at {v}.", "The {name} pays at most {v} per claim.",
              "No single claim under the {name} may exceed {v}."),
    "effective": ("The {name} has applied since {v}.", "The {name} became binding on {v}.",
                  "{v} is the date from which the {name} holds."),
    "owner": ("{v} owns the {name}.", "The owner of the {name} is {v}.", "The {name} belongs to {v}."),
}
N_REWRITES = 3
# The arms a reader could build from the documents, by key, with the name a reader reads
ARM_LABELS = {"documents": "documents as they are", "rewritten": "documents rewritten",
              "generated": "questions generated from the documents"}

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
# Value-like spans, the longest first where two start together: a date, a month and year, a sum of
# money, a code, a number with its unit, a number, a capitalised name of one or more words
_VALUE = re.compile("|".join([
    rf"\b\d{{1,2}} {_MONTH} \d{{4}}\b", rf"\b{_MONTH} \d{{4}}\b", r"\$[\d,]+", r"\b[A-Z]{2,}-\d+\b",
    r"\b\d[\d,.]*\d (?:kg|months|days)\b|\b\d (?:kg|months|days)\b", r"\b\d[\d,.]*\d\b|\b\d\b",
    r"\b[A-Z][a-z]+(?: [A-Z][\w]*)*\b",
]))
# Capitalised words that open a sentence or name no value: the openers of this knowledge base's
# sentences (a reader's own corpus would need its own list, or a tagger)
_NOT_NAMES = {"The", "It", "Its", "Every", "Each", "A", "An", "Under", "Before", "After", "About", "Late", "Larger",
              "Repairs"}


@dataclass(frozen=True)
class GeneratedQuestion:
    doc_id: str
    question: str
    answer: str


def recite_prompt(doc) -> str:
    return RECITE.format(title=doc.title)


def _is_person(q) -> bool:
    return bool(q.doc_ids) and q.doc_ids[0].startswith("person-")


def rewrite_sentence(q, variant: int) -> str:
    """The fact's sentence restated by rewrite `variant` (0 .. N_REWRITES - 1)."""
    key = "person_site" if q.attribute == "site" and _is_person(q) else q.attribute
    gold = q.gold_sentences[0]
    rest = gold.rstrip(".")
    rest = rest[rest.index(q.answer) + len(q.answer):] if q.answer in rest else ""
    text = REWRITES[key][variant].format(name=q.entity, v=q.answer, rest=rest)
    return text[0].upper() + text[1:]


def rewritten_document(kb, doc, variant: int) -> str:
    """The document with every sentence that states one of its facts replaced by that fact's rewrite
    `variant`; the other sentences and the paragraphs as they are."""
    text = doc.text
    for q in kb.by_kind("single"):
        if q.doc_ids and q.doc_ids[0] == doc.doc_id:
            text = text.replace(q.gold_sentences[0], rewrite_sentence(q, variant))
    return text


def values(sentence: str, skip: str = "", not_names: frozenset | set = _NOT_NAMES) -> list[tuple[int, int]]:
    """Where the value-like spans of a sentence are, as (start, end), in order, leaving out `skip`
    (the document's own entity) and the capitalised words that name no value (`not_names`)."""
    out = []
    for m in _VALUE.finditer(sentence):
        start, words = m.start(), m.group(0).split()
        while words and words[0] in not_names:  # "Every unit": a sentence's first word, not a name
            start += len(words.pop(0)) + 1
        if words and " ".join(words) != skip:
            out.append((start, m.end()))
    return out


def cloze_questions(title: str, text: str, skip: str = "", not_names: frozenset | set = _NOT_NAMES) -> list[tuple[str, str]]:
    """The rule's cloze questions about one text, as (question, value): one for each value-like span of
    each sentence of each paragraph (a markdown heading is a paragraph of its own, its marks dropped)."""
    out = []
    for s in (s for block in paragraphs(text) for s in sentences(block)):
        for start, end in values(s, skip, not_names):
            if s[:start].strip() or s[end:].strip(" ."):  # a sentence that is its value alone asks nothing
                out.append((CLOZE.format(title=title, sentence=s[:start] + BLANK + s[end:]), s[start:end]))
    return out


def paragraphs(text: str) -> list[str]:
    """A text's paragraphs: lines up to a blank line, a markdown heading a paragraph of its own
    without its marks."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        heading = line.lstrip().startswith("#")
        if block and (not line.strip() or heading):
            out.append(" ".join(block))
            block = []
        if heading:
            out.append(line.strip().lstrip("#").strip())
        elif line.strip():
            block.append(line.strip())
    return [b for b in out if b]


def generated_questions(doc) -> list[GeneratedQuestion]:
    """The rule's cloze questions about one document of the knowledge base."""
    return [GeneratedQuestion(doc.doc_id, q, v) for q, v in cloze_questions(doc.title, doc.text, skip=doc.entity)]


def not_names_of(texts: list[str]) -> frozenset:
    """The capitalised words of a reader's corpus that name no value: those whose lower-case form the
    corpus also uses ("Crew lockers" where it says "the crew"), and the openers the knowledge base's
    rule knows. A name a corpus also writes in lower case ("Bath", "bath") is lost with them."""
    lower = set(re.findall(r"\b[a-z]+\b", " ".join(texts)))
    capitalised = set(re.findall(r"\b[A-Z][a-z]+\b", " ".join(texts)))
    return frozenset(_NOT_NAMES | {w for w in capitalised if w.lower() in lower})


def statement_prefix(kb, q, variant: int | None = None) -> str:
    """The document's text up to the fact's value, where it states the fact: as it is (variant None)
    or in rewrite `variant`. A model that stored the document continues it with the value."""
    doc = kb.doc(q.doc_ids[0])
    if variant is None:
        text, sentence = doc.text, q.gold_sentences[0]
    else:
        text, sentence = rewritten_document(kb, doc, variant), rewrite_sentence(q, variant)
    return text[:text.index(sentence) + sentence.index(q.answer)].rstrip()


def fact_cloze(kb, q) -> str:
    """The rule's cloze question on the sentence that states the fact, its value blanked (what the
    generated arm trained on for this fact, where the rule found the value)."""
    s = q.gold_sentences[0]
    at = s.index(q.answer)
    return CLOZE.format(title=kb.doc(q.doc_ids[0]).title, sentence=s[:at] + BLANK + s[at + len(q.answer):])
