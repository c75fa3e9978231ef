"""A decision helper built from the articles' own rules (D1, D2, D3 in data/claims.yaml), each reason
tagged with the claims it rests on, so the verdict chapter can set the book's evidence beside it.

The rules are the sources' as stated; this module does not improve them. Where the book's evidence
disagrees with a rule, the verdict chapter shows the rule's reason next to that claim's verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TASKS = ("facts", "format", "both")
APPROACHES = ("prompting", "RAG", "fine-tune", "hybrid")
# D1 and D3's thresholds, as the sources state them
HEYM_STATIC_QUERIES_PER_DAY = 100_000
ACTIAN_VOLUME_BANDS = (10e6, 50e6, 100e6)  # monthly queries: < 10 M, 10-50 M, 50-100 M, > 100 M
ERGINI_MIN_EXAMPLES = 200
ERGINI_MIN_CALLS_PER_MONTH = 50_000
ERGINI_MIN_PROMPT_COST_USD = 200
FREQUENT_UPDATES_PER_MONTH = 4  # weekly or more often (D3's "weekly/daily" column)
RARE_UPDATES_PER_MONTH = 1  # less than monthly (D3's "< 1 a month" column)


@dataclass(frozen=True)
class Reader:
    """A reader's situation: what is wrong with the model's answers today, and how it will be used."""

    task: str  # facts | format | both: what the model gets wrong
    updates_per_month: float = 0.0  # how often the facts change
    private_documents: bool = False  # the answers must come from documents the model never saw
    queries_per_month: float = 100_000
    examples: int = 0  # labelled examples of the wanted behaviour
    tried_prompting: bool = True
    rag_baseline: bool = False
    eval_set: bool = False
    prompt_cost_usd_per_month: float = 0.0
    ready_to_retrain: bool = False
    latency_budget_ms: float = 0.0  # the most an answer may take; 0: no budget

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not allowed: use one of {list(TASKS)}")
        for name in ("updates_per_month", "queries_per_month", "prompt_cost_usd_per_month", "latency_budget_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} is not allowed: use a finite number >= 0")
        if isinstance(self.examples, bool) or not isinstance(self.examples, int) or self.examples < 0:
            raise ValueError(f"examples={self.examples!r} is not allowed: use an integer >= 0")
        for name in ("private_documents", "tried_prompting", "rag_baseline", "eval_set", "ready_to_retrain"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: use True or False")


@dataclass(frozen=True)
class Reason:
    rule: str  # D1 | D2 | D3
    says: str
    claims: tuple[str, ...] = ()  # the claim ids whose evidence bears on it


@dataclass
class Advice:
    rule: str
    approach: str
    reasons: list[Reason] = field(default_factory=list)


def heym_d1(r: Reader) -> Advice:
    """D1: five questions in order; the first that applies decides."""
    if r.updates_per_month > 0 and r.task != "format":
        return Advice("D1", "RAG", [Reason("D1", "the facts change: an index is updated by re-embedding, a fine-tune by retraining", ("U1", "U2"))])
    if r.private_documents:  # the source's second question, asked whatever else is wrong
        return Advice("D1", "RAG", [Reason("D1", "the answers must come from private documents", ("K1",))])
    if r.task == "facts":
        return Advice("D1", "RAG", [Reason("D1", "the model gets facts wrong: retrieval is the tool for knowledge", ("K1", "K2", "K5"))])
    if r.task == "format":
        if r.updates_per_month == 0 and r.queries_per_month / 30 > HEYM_STATIC_QUERIES_PER_DAY:
            return Advice("D1", "fine-tune", [Reason("D1", "over 100 K queries a day on a static task: consider fine-tuning a small model", ("S7",))])
        return Advice("D1", "fine-tune", [Reason("D1", "the model gets the format wrong: fine-tuning is the tool for behaviour", ("K4", "T4"))])
    return Advice("D1", "hybrid", [Reason("D1", "both knowledge and strict behaviour are wrong: the hybrid", ("F3", "K6"))])


def ergini_d2(r: Reader) -> Advice:
    """D2: eight checks before fine-tuning; fine-tune only when every one passes."""
    checks = [
        (r.tried_prompting, "prompting has been tried", ("K4",)),
        (r.rag_baseline, "a RAG baseline has shipped", ("K1",)),
        (r.examples >= ERGINI_MIN_EXAMPLES, f"at least {ERGINI_MIN_EXAMPLES} examples", ("T4",)),
        (r.task != "facts", "the problem is behaviour, not facts", ("K1", "K4")),
        (r.updates_per_month * 3 < 1, "the data stays stable for 3 months", ("U1",)),
        (r.queries_per_month > ERGINI_MIN_CALLS_PER_MONTH or r.prompt_cost_usd_per_month > ERGINI_MIN_PROMPT_COST_USD,
         "over 50 K calls a month or over $200 a month of prompt cost", ("S5",)),
        (r.eval_set, "an evaluation set exists", ()),
        (r.ready_to_retrain, "retraining every 3-6 months is planned", ("U2",)),
    ]
    failed = [Reason("D2", f"not yet: {text}", claims) for ok, text, claims in checks if not ok]
    if failed:
        return Advice("D2", "RAG" if r.task != "format" else "prompting", failed)
    return Advice("D2", "fine-tune", [Reason("D2", "all eight checks pass", ("T4", "S5"))])


def actian_d3(r: Reader) -> Advice:
    """D3: monthly query volume by update frequency (the volume bands are S6's thresholds)."""
    band = sum(r.queries_per_month >= b for b in ACTIAN_VOLUME_BANDS)  # 0: < 10 M ... 3: > 100 M
    volume = ("under 10 M", "10-50 M", "50-100 M", "over 100 M")[band] + " queries a month"
    if r.updates_per_month >= FREQUENT_UPDATES_PER_MONTH:
        approach, why = ("RAG" if band < 2 else "hybrid"), "facts change weekly or faster"
    elif r.updates_per_month < RARE_UPDATES_PER_MONTH:
        approach, why = (("RAG", "RAG", "fine-tune", "fine-tune")[band]), "facts change less than monthly"
        if band == 1:
            why += " (the source says: evaluate both)"
    else:
        approach, why = ("RAG" if band < 2 else "hybrid"), "facts change monthly or so (between the source's columns: read as frequent)"
    return Advice("D3", approach, [Reason("D3", f"{volume}, {why}", ("S6", "U1"))])


def latency_reason(r: Reader, advice: Advice, retrieval_added_ms: float | None) -> Reason | None:
    """None of the rules asks about latency; where the reader has a budget and the advice retrieves,
    what retrieval added per answer in this run (chapter 6, S1/S2) set beside that budget."""
    if not r.latency_budget_ms or retrieval_added_ms is None or advice.approach not in ("RAG", "hybrid"):
        return None
    within = "within" if retrieval_added_ms <= r.latency_budget_ms else "over"
    return Reason(advice.rule, f"retrieval added {retrieval_added_ms:.0f} ms per answer in this run: {within} "
                               f"the {r.latency_budget_ms:g} ms budget", ("S1", "S2"))


def decide(r: Reader, retrieval_added_ms: float | None = None) -> list[Advice]:
    """The three rules' advice for one reader, each with its reasons and the claims behind them; with
    a measured retrieval latency, each retrieving advice also says how it sits with the reader's budget."""
    advice = [heym_d1(r), ergini_d2(r), actian_d3(r)]
    for a in advice:
        if (reason := latency_reason(r, a, retrieval_added_ms)) is not None:
            a.reasons.append(reason)
    return advice
