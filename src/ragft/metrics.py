"""Answer and retrieval metrics: one implementation of each.

Answer metrics follow the SQuAD v1.1 evaluation script's normalisation (lower case, drop punctuation
and the articles a/an/the, fold white space). EM and F1 score the short answer that `short_answer`
extracts from a reply, by one rule for every reader, so that "The answer is: 6 months." counts as
"6 months"; a reply that is a whole sentence stays a whole sentence (EM then measures its format).
"contains" is the lenient score: a normalised gold answer (or alias) appears inside the normalised
prediction, which suits chatty small models.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

from .costs import cost_per_1k_queries
from .prompts import ANSWER_MARKER
from .stats import wilson_interval

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")  # [2] or [1, 3]
# A lead-in before the answer proper: "The answer is:", "So, the answer to this question is", "Answer:".
_LEAD_IN = re.compile(r"\banswer(?: to (?:this|the) question)?(?: is)?\s*:|\banswer(?: to (?:this|the) question)? is\b",
                      re.IGNORECASE)
# A sentence ends at . ! or ? after two lower-case letters or digits and before a capital ("St. Louis",
# "Dr. Lee" and "$2.5" do not end one).
_SENTENCE_END = re.compile(r"(?<=[a-z0-9]{2}[.!?])\s+(?=[A-Z])")
_TRIM = " \t\"'`*.,;:!?"
WORDY_EXTRA = 4  # words beyond the longest gold answer that make a reply a sentence, not a phrase


def strip_citations(answer: str) -> str:
    return CITATION.sub("", answer).strip()


def final_answer(text: str) -> str:
    """What follows the last final-answer marker (RAFT's); the whole text when there is none."""
    return text.rsplit(ANSWER_MARKER, 1)[-1].strip()


def short_answer(text: str) -> str:
    """The short answer in a reply, the same rule for every reader before EM and F1: the text after
    the last final-answer marker (RAFT's), without citation brackets, after the last lead-in ("the
    answer is:"), its first line and first sentence, without surrounding quotes or end punctuation.
    Known limits of a rule this simple: a later "this answer is ..." wins over an earlier lead-in, and
    an abbreviation of three or more letters before a capital ("Gen. Lee") ends a sentence."""
    text = strip_citations(final_answer(text))
    lead_ins = list(_LEAD_IN.finditer(text))
    if lead_ins and text[lead_ins[-1].end():].strip():
        text = text[lead_ins[-1].end():]
    text = next((line for line in text.strip().splitlines() if line.strip()), "")
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip(_TRIM)


def wordy(prediction: str, answers: list[str]) -> float:
    """1 when the short answer is WORDY_EXTRA or more words longer than the longest gold answer: a
    sentence where a phrase was asked for (EM then measures its format, not knowledge)."""
    longest = max((len(normalize(a).split()) for a in answers), default=0)
    return float(len(normalize(short_answer(prediction)).split()) >= longest + WORDY_EXTRA)


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


HOTPOTQA_SPECIAL = ("yes", "no", "noanswer")


def hotpotqa_f1(prediction: str, answers: list[str]) -> float:
    """Token F1 as HotpotQA's official script (hotpot_evaluate_v1.py) computes it: where the normalized
    prediction or gold answer is yes, no or noanswer, anything but the same word scores 0 (plain
    token F1 would give "yes it is" against "yes" 0.5); otherwise SQuAD's token F1. The best over
    the gold answers."""
    pred = normalize(prediction)
    scores = []
    for a in answers:
        gold = normalize(a)
        if (pred in HOTPOTQA_SPECIAL or gold in HOTPOTQA_SPECIAL) and pred != gold:
            scores.append(0.0)
        else:
            scores.append(f1(prediction, [a]))
    return max(scores, default=0.0)


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
# Scoring a set of answers


def score_answers(predictions: list[str], items: list) -> dict[str, float]:
    """Mean scores over QA items (objects with .answers and .kind). Unanswerable items count only
    towards refusal accuracy; answerable ones count towards the answer scores and false refusals.
    EM and F1 score each reply's `short_answer`; "contains" and refusals the whole reply."""
    answerable = [(p, it) for p, it in zip(predictions, items) if it.kind != "unanswerable"]
    unanswerable = [p for p, it in zip(predictions, items) if it.kind == "unanswerable"]
    out: dict[str, float] = {}
    if answerable:
        n = len(answerable)
        out["contains"] = sum(contains(p, it.answers) for p, it in answerable) / n
        short = [short_answer(p) for p, _ in answerable]
        out["em"] = sum(exact_match(s, it.answers) for s, (_, it) in zip(short, answerable)) / n
        out["f1"] = sum(f1(s, it.answers) for s, (_, it) in zip(short, answerable)) / n
        out["wordy"] = sum(wordy(p, it.answers) for p, it in answerable) / n
        out["false_refusal"] = sum(is_refusal(p) for p, _ in answerable) / n
    if unanswerable:
        out["refusal_acc"] = sum(is_refusal(p) for p in unanswerable) / len(unanswerable)
    return out


def answer_outcomes(items: list, texts: list[str]) -> tuple[dict, dict]:
    """Per question, as `score_answers` scores them (so their means are its rates): {qid: contains}
    for the answerable items and {qid: refused} for the unanswerable ones, each 0 or 1."""
    if len(items) != len(texts):
        raise ValueError(f"{len(items)} questions but {len(texts)} answers: they must pair up in order")
    answered, refused = {}, {}
    for item, text in zip(items, texts):
        if item.qid in answered or item.qid in refused:
            raise ValueError(f"question {item.qid!r} asked twice in one condition: outcomes are per question")
        if item.kind == "unanswerable":
            refused[item.qid] = int(is_refusal(text))
        else:
            answered[item.qid] = int(contains(text, item.answers))
    return answered, refused


def condition_row(name: str, gen, items: list, price_row: str, **extra) -> dict:
    """One row of a results table: scores (with a 95 % interval on "contains"), tokens per query,
    latency, cost per 1,000 queries."""

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
