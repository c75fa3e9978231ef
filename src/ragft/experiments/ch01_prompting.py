"""Chapter 1, prompt engineering and long context: how far prompting alone gets on the knowledge base.

Knowledge is scored by candidate log-likelihood (ragft.scoring.rank_candidates): for each question
the gold value and CANDIDATES_K look-alike values of the same attribute (KnowledgeBase.candidates),
right when the gold value is the most likely reply (chance 1 / (CANDIDATES_K + 1)). When a condition
asks unanswerable questions, the refusal reply prompts.REFUSAL_ANSWER is ranked too: its
log-likelihood minus the best value's is the question's refusal score (a detector: AUROC, and
refusal recall at <= 5 % false refusals on the answerable questions).

Conditions, in the order the chapter measures them:

  closed book          the question alone, a plain system prompt
  instruction          the question with an instruction to answer briefly or refuse
  few-shot k=K         the instruction plus K question-answer examples (k=0 is the instruction's scores)
  gold document        the document that holds the answer in the prompt
  gold documents, two-hop   both documents of a two-document question
  haystack gold only / haystack T   groups of haystack_documents documents, each alone and hidden
                       among others up to T tokens, with all their questions

Recorded per question: "<name>" 1 when the gold value outscores its look-alikes (answerable
questions), "<name> refusal" 1 when the refusal outscores every look-alike value (unanswerable
ones). Generated answers, on the first n_generated questions, are the format view (EM, F1,
"contains", generated refusals): recorded as "<name>, generated" and "<name>, generated refusal".

Each section (closed_book, few_shot, gold_documents, long_context) takes its inputs and returns a
Section of what it measured; Findings gathers them for the tables, the figure, the metrics and the
comparisons. The Chapter holds the set-up only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import metrics, prompts, report
from ..costs import load_prices
from ..generation import Generation, generate
from ..plan import prose_terms
from ..results import ChapterRun, Clock, Measured, judged_of, state_comparisons
from ..prose import StatedComparison, glue, glue_metrics
from ..scoring import Ranking, rank_candidates
from ..stats import MAX_FALSE_REFUSALS, auroc, recall_at_fpr, wilson_interval
from .common import REFUSAL_SUFFIX, answer_outcomes, start

CHAPTER = "01_prompting"
# Tokens a haystack must leave free in the context window for the question and the answer.
HAYSTACK_HEADROOM = 200
# The knowledge base's sanity properties (DESIGN): unknown to the model, readable with the right text.
SANITY_CLOSED_BOOK_MAX = 0.10
SANITY_GOLD_DOCUMENT_MIN = 0.60
GROUPS = ("test", "few-shot", "long context", "development")  # "development": the few-shot k's choice, not plotted
DEVELOPMENT = ", development"  # suffix of a few-shot condition ranked on the development questions
CANDIDATES_K = 3  # look-alike values ranked against the gold one: chance 1 / 4
GENERATED = ", generated"  # suffix of the recorded outcomes of generated answers


@dataclass
class Condition:
    """One prompting condition's generated answers (the format view) and their table row."""

    name: str
    group: str  # one of GROUPS: which line or points of the figure it belongs to
    items: list  # ragft.corpus.kb.Question objects, in the order asked
    generation: Generation
    row: dict  # ragft.metrics.condition_row
    measured: Measured  # its per-question outcomes (answers, and refusals under " refusal")


@dataclass
class Ranked:
    """One condition scored by candidate log-likelihood: the knowledge ranking of its answerable
    questions (values only), the refusal score of every question when the refusal was ranked, the row."""

    name: str
    group: str
    items: list
    knowledge: Ranking  # answerable questions only, in item order, values only
    refusal_scores: dict  # qid -> LL(refusal) - max LL(value); empty when the refusal was not ranked
    row: dict
    ranking: Ranking  # every question, in candidate_lists' layout (the refusal last when ranked)
    with_refusal: bool
    measured: Measured  # its per-question outcomes (knowledge, and refusals under " refusal")


@dataclass
class Section:
    """What one section measured, in the order it ran: its conditions ranked by candidate
    log-likelihood, and its generated ones (the format view)."""

    ranked: list  # Ranked
    generated: list = field(default_factory=list)  # Condition

    def ranked_rows(self, *groups: str) -> list[dict]:
        """Rows of the ranked conditions in these groups (all when none is named), in run order."""
        return [c.row for c in self.ranked if not groups or c.group in groups]

    def rows(self, *groups: str) -> list[dict]:
        """Rows of the generated conditions in these groups (all when none is named), in run order."""
        return [c.row for c in self.generated if not groups or c.group in groups]

    def named(self, name: str) -> Ranked:
        """The ranked condition of that name (few_shot reads the instruction's from closed_book's)."""
        found = [c for c in self.ranked if c.name == name]
        if not found:
            raise KeyError(f"no ranked condition {name!r} in this section: it has {[c.name for c in self.ranked]}")
        return found[0]

    @property
    def measured(self) -> Measured:
        """Every condition's per-question outcomes, in run order."""
        return Measured.merged(*(c.measured for c in self.ranked + self.generated))


class Findings(Section):
    """Every section's conditions together, in run order: by name (`by_name`, `answers`) for the
    metrics and the comparisons, by group for the tables and the figure."""

    def __init__(self, *sections: Section):
        super().__init__([c for s in sections for c in s.ranked], [c for s in sections for c in s.generated])
        for kind, conditions in (("ranked", self.ranked), ("generated", self.generated)):
            names = [c.name for c in conditions]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"conditions {repeated} are {kind} twice: each name is one condition")

    @property
    def by_name(self) -> dict:
        """name -> Ranked."""
        return {c.name: c for c in self.ranked}

    @property
    def answers(self) -> dict:
        """name -> Condition (the generated answers)."""
        return {c.name: c for c in self.generated}

    def frame(self, group: str) -> pd.DataFrame:
        """The ranked rows of one group as a table, by condition."""
        return pd.DataFrame(self.ranked_rows(group)).set_index("condition")

    @property
    def long_context_questions(self) -> list:
        haystacks = [c for c in self.ranked if c.group == "long context"]
        return haystacks[0].items if haystacks else []


@dataclass(frozen=True)
class Chapter:
    """The chapter's set-up: parameters, results file, model, knowledge base and question sets. No
    section writes here (frozen): each returns a Section."""

    params: object
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    lm: object
    kb: object
    single: list
    multihop: list
    unanswerable: list
    examples: dict  # k -> the few-shot examples (question, answer) every question of that k is shown, k > 0
    development: list  # single-fact questions that choose the few-shot k: none a test question or an example

    @property
    def test(self) -> list:
        """The test set: single-fact questions, then unanswerable ones (the order answers are kept in)."""
        return self.single + self.unanswerable

    @property
    def generated_test(self) -> list:
        """The questions whose answers are generated (the format view): the first n_generated
        single-fact and n_generated/2 unanswerable test questions."""
        n = self.params.n_generated
        return self.single[:n] + self.unanswerable[: max(1, n // 2)]

    @property
    def few_shot_items(self) -> list:
        """The few-shot runs' questions: the first n single-fact and n/2 unanswerable test questions."""
        n = self.params.n_few_shot_questions
        return self.single[:n] + self.unanswerable[: max(1, n // 2)]

    def count_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def summary(self) -> str:
        lm, kb = self.lm, self.kb
        return (f"{lm.name}: {lm.n_params() / 1e6:.0f} M parameters, {lm.dtype}, {lm.device}, "
                f"context {lm.context_window} tokens\nknowledge base {kb.version}: {len(kb.documents)} "
                f"documents, {len(kb.questions)} questions")


def setup(params) -> Chapter:
    """Seeds, threads and network policy; the model; the knowledge base; the sampled question sets,
    the few-shot examples and the development questions that choose among them."""
    folder, clock, lm, _, kb = start(CHAPTER, params)
    single, unanswerable = kb.sample("single", params.n_single, params.seed), kb.sample("unanswerable", params.n_unanswerable, params.seed)
    test = {q.qid for q in single + unanswerable}
    examples = {k: prompts.few_shot_examples(kb.questions, k, test, params.seed) for k in params.few_shot_ks if k > 0}
    return Chapter(params, clock, folder, lm, kb, single, kb.sample("multihop", params.n_multihop, params.seed), unanswerable,
                   examples, development_questions(kb, test, examples, params.n_few_shot_dev, params.seed))


def development_questions(kb, test: set, examples: dict, n: int, seed: int) -> list:
    """n single-fact questions that are neither test questions (`test`: their ids) nor any few-shot
    example's fact (a question whose training paraphrase is shown as an example would score its own
    answer): the few-shot k is chosen on them. Drawn with seed + 1, as chapter 2 draws its own."""
    shown = {text for picked in examples.values() for text, _ in picked}
    pool = [q for q in kb.sample("single", len(kb.by_kind("single")), seed + 1)
            if q.qid not in test and not shown.intersection(q.train_texts)]
    if len(pool) < n:
        raise ValueError(f"n_few_shot_dev={n}: this knowledge base has {len(pool)} single-fact questions that are "
                         "neither test questions nor few-shot examples; lower n_few_shot_dev or n_single, or grow kb")
    return pool[:n]


def question_examples(ch: Chapter) -> pd.DataFrame:
    """A few test questions of each kind with their gold answers and the look-alikes ranked against them."""
    shown = ch.single[:3] + ch.multihop[:1] + ch.unanswerable[:2]
    rows = []
    for q in shown:
        values, gold = ch.kb.candidates(q, CANDIDATES_K, ch.params.seed)
        rows.append((q.kind, q.test_text, q.answer, ", ".join(v for i, v in enumerate(values) if i != gold)))
    return pd.DataFrame(rows, columns=["kind", "question (test paraphrase)", "gold answer", "look-alikes ranked against it"])


# ---------------------------------------------------------------------------------------------
# Per-question outcomes: log-likelihood ranking


def _answerable(items: list) -> int:
    return sum(q.kind != "unanswerable" for q in items)


def _unanswerable(items: list) -> int:
    return sum(q.kind == "unanswerable" for q in items)


def candidate_lists(ch: Chapter, items: list) -> tuple[list[list[str]], list[int], bool]:
    """Each question's values (gold and CANDIDATES_K look-alikes), with the refusal reply appended when
    the items include unanswerable questions; the index to pass as gold (the refusal's for an
    unanswerable question); whether the refusal was appended."""
    with_refusal = _unanswerable(items) > 0
    cands, golds = [], []
    for q in items:
        values, gold = ch.kb.candidates(q, CANDIDATES_K, ch.params.seed)
        if with_refusal:
            values = values + [prompts.REFUSAL_ANSWER]
            gold = len(values) - 1 if gold is None else gold
        cands.append(values)
        golds.append(gold)
    return cands, golds, with_refusal


def ranked_row(name: str, items: list, knowledge: Ranking, refusal_scores: dict, prompt_tokens: list[int],
               seconds: float, **extra) -> dict:
    """A log-likelihood condition's row: accuracy with its Wilson interval against chance, and the
    refusal detector's scores when the refusal was ranked."""
    n = len(knowledge.correct)
    lo, hi = wilson_interval(sum(knowledge.correct), n)
    row = {"condition": name, "n": n, "ll_acc": knowledge.accuracy, "ll_lo": lo, "ll_hi": hi,
           "chance": knowledge.chance, "prompt_tokens": sum(prompt_tokens) / max(1, len(prompt_tokens)),
           "s_per_question": seconds / max(1, len(items))}
    if refusal_scores:
        pos = [refusal_scores[q.qid] for q in items if q.kind == "unanswerable"]
        neg = [refusal_scores[q.qid] for q in items if q.kind != "unanswerable"]
        recall, _ = recall_at_fpr(pos, neg, MAX_FALSE_REFUSALS)
        row.update({"n_unanswerable": len(pos), "refusal_preferred": sum(x > 0 for x in pos) / len(pos),
                    "false_refusal": sum(x > 0 for x in neg) / len(neg), "refusal_auroc": auroc(pos, neg),
                    "refusal_recall": recall})
    row.update(extra)
    return row


def add_ranked(ch: Chapter, name: str, group: str, items: list, ranking: Ranking, with_refusal: bool,
               **extra) -> Ranked:
    """Split a ranking (candidate_lists' layout) into knowledge and refusal, and return the condition
    with its row and both parts' per-question outcomes."""
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not allowed: use one of {list(GROUPS)}")
    if len(ranking.scores) != len(items):
        raise ValueError(f"{len(ranking.scores)} ranked questions for {len(items)} items")
    answerable = [i for i, q in enumerate(items) if q.kind != "unanswerable"]
    cut = (lambda s: s[:-1]) if with_refusal else (lambda s: s)
    knowledge = Ranking([cut(ranking.scores[i]) for i in answerable], [ranking.gold[i] for i in answerable],
                        [ranking.prompt_tokens[i] for i in answerable], ranking.seconds)
    refusal = ({q.qid: s[-1] - max(s[:-1]) for q, s in zip(items, ranking.scores)} if with_refusal else {})
    tokens = {q.qid: (t, 0) for q, t in zip(items, ranking.prompt_tokens)}
    measured = Measured()
    if answerable:
        ids = [items[i].qid for i in answerable]
        measured.record(name, knowledge.outcomes(ids), tokens={q: tokens[q] for q in ids})
    refusals = {q.qid: int(refusal[q.qid] > 0) for q in items if q.kind == "unanswerable"}
    if refusals:
        measured.record(name + REFUSAL_SUFFIX, refusals, tokens={q: tokens[q] for q in refusals})
    row = ranked_row(name, items, knowledge, refusal, ranking.prompt_tokens, ranking.seconds, **extra)
    return Ranked(name, group, items, knowledge, refusal, row, ranking, with_refusal, measured)


def rank(ch: Chapter, name: str, group: str, conversations: list, items: list, stage: str | None = None,
         **extra) -> Ranked:
    """Rank each question's candidates after its prompt (timed as a stage of the results file)."""
    cands, golds, with_refusal = candidate_lists(ch, items)
    with ch.clock.stage(stage or name):
        ranking = rank_candidates(ch.lm, conversations, cands, golds, desc=name, batch_size=ch.params.batch_size)
    return add_ranked(ch, name, group, items, ranking, with_refusal, **extra)


def subset_ranking(ranking: Ranking, indices: list[int]) -> Ranking:
    """The same ranking restricted to some questions (seconds shared out by question)."""
    return Ranking([ranking.scores[i] for i in indices], [ranking.gold[i] for i in indices],
                   [ranking.prompt_tokens[i] for i in indices], ranking.seconds * len(indices) / max(1, len(ranking.scores)))


# ---------------------------------------------------------------------------------------------
# Per-question outcomes: generated answers (the format view)


def add_condition(ch: Chapter, name: str, group: str, items: list, gen: Generation, **extra) -> Condition:
    """Score a condition whose answers are already generated, and return it with its row and its
    per-question outcomes."""
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not allowed: use one of {list(GROUPS)}")
    row = metrics.condition_row(name, gen, items, ch.params.price_per_mtok, **extra)
    return Condition(name, group, items, gen, row, answer_outcomes(name + GENERATED, items, gen))


def measure(ch: Chapter, name: str, group: str, conversations: list, items: list, stage: str | None = None,
            **extra) -> Condition:
    """Generate the answers of one condition (timed as a stage of the results file), then score it."""
    p = ch.params
    with ch.clock.stage(stage or name + GENERATED):
        gen = generate(ch.lm, conversations, p.max_new_tokens, p.batch_size, desc=name)
    return add_condition(ch, name, group, items, gen, **extra)


# ---------------------------------------------------------------------------------------------
# The chapter's sections


def closed_book(ch: Chapter) -> Section:
    """The test questions alone: with a plain system prompt, then with the instruction; ranked on
    every test question, answers generated on the first few."""
    out = Section([])
    for name, system in (("closed book", prompts.PLAIN_SYSTEM), ("instruction", prompts.INSTRUCTION_SYSTEM)):
        out.ranked.append(rank(ch, name, "test", [prompts.build_messages(q.test_text, system=system) for q in ch.test],
                               ch.test))
        out.generated.append(measure(ch, name, "test", [prompts.build_messages(q.test_text, system=system)
                                                       for q in ch.generated_test], ch.generated_test))
    return out


def few_shot(ch: Chapter, closed: Section) -> Section:
    """The instruction prompt with k examples from other facts' training paraphrases, for each k of
    few_shot_ks, ranked on the test questions and, for k > 0, on the development questions, which
    choose the k the comparison tests (chosen_few_shot). With no examples the prompt is the
    instruction prompt, so k=0 reuses its scores (closed_book's). The chosen k also generates
    answers on the first few questions (the format view)."""
    items = ch.few_shot_items
    out = Section([])

    def shown_examples(k, questions):  # every question of this k after the same examples
        return [prompts.build_messages(q.test_text, examples=ch.examples[k]) for q in questions]

    for k in ch.params.few_shot_ks:
        name = f"few-shot k={k}"
        if k == 0:
            base = closed.named("instruction")
            picked = subset_ranking(base.ranking, [base.items.index(q) for q in items])
            out.ranked.append(add_ranked(ch, name, "few-shot", items, picked, base.with_refusal, k=0))
            continue
        out.ranked.append(rank(ch, name + DEVELOPMENT, "development", shown_examples(k, ch.development), ch.development, k=k))
        out.ranked.append(rank(ch, name, "few-shot", shown_examples(k, items), items, k=k))
    chosen = chosen_few_shot(out)
    if chosen is not None:
        k = chosen.row["k"]
        shown = [q for q in ch.generated_test if q in items]
        out.generated.append(measure(ch, chosen.name, "few-shot", shown_examples(k, shown), shown, k=k))
    return out


def _with_documents(ch: Chapter, question, documents: list[str] | None = None) -> list[dict]:
    documents = documents if documents is not None else [ch.kb.doc(d).text for d in question.context_doc_ids]
    return prompts.build_messages(question.test_text, system=prompts.CONTEXT_SYSTEM, passages=documents)


def gold_documents(ch: Chapter) -> Section:
    """The document that holds the answer in the prompt (the nearest one for an unanswerable
    question), and both documents of each two-document question; ranked on every question, answers
    generated on the first few."""
    out = Section([rank(ch, "gold document", "test", [_with_documents(ch, q) for q in ch.test], ch.test)])
    out.generated.append(measure(ch, "gold document", "test", [_with_documents(ch, q) for q in ch.generated_test],
                                 ch.generated_test))
    out.ranked.append(rank(ch, "gold documents, two-hop", "test", [_with_documents(ch, q) for q in ch.multihop],
                           ch.multihop))
    shown = ch.multihop[: max(1, ch.params.n_generated // 2)]
    if shown:
        out.generated.append(measure(ch, "gold documents, two-hop", "test", [_with_documents(ch, q) for q in shown], shown))
    return out


ANSWER_EXAMPLES = ("closed book", "instruction", "gold document")  # the conditions answer_examples sets side by side


def answer_examples(*sections: Section) -> pd.DataFrame:
    """The same few test questions (four answerable, two unanswerable) under the ANSWER_EXAMPLES
    conditions, which answered the same questions (from the sections that measured them)."""
    answered = Findings(*sections).answers
    test = answered[ANSWER_EXAMPLES[0]].items
    shown = ([i for i, q in enumerate(test) if q.kind == "single"][:4]
             + [i for i, q in enumerate(test) if q.kind == "unanswerable"][:2])
    table = {"question": [test[i].test_text for i in shown], "gold": [test[i].answer for i in shown]}
    for name in ANSWER_EXAMPLES:
        table[name] = [answered[name].generation.texts[i] for i in shown]
    return pd.DataFrame(table)


def haystack_levels(params, context_window: int) -> list[int]:
    """Haystack sizes to run: 0 (the gold documents alone), then each size that leaves room in the
    window for the question and the answer."""
    return [0] + [t for t in params.long_context_tokens if t + HAYSTACK_HEADROOM < context_window]


def haystack_groups(ch: Chapter) -> list[tuple[list, list]]:
    """Product documents with all their single-fact questions (n_long_context_questions in all), in
    groups of haystack_documents documents: each group's questions are asked against its own haystack."""
    p = ch.params
    documents, questions = ch.kb.questions_about_documents(p.n_long_context_questions, p.seed)
    groups = []
    for start_ in range(0, len(documents), p.haystack_documents):
        docs = documents[start_:start_ + p.haystack_documents]
        ids = {d.doc_id for d in docs}
        asked = [q for q in questions if q.doc_ids[0] in ids]
        if asked:
            groups.append((docs, asked))
    return groups


def long_context(ch: Chapter) -> Section:
    """Groups of a few documents and all their single-fact questions, each group asked against its
    own haystack: the documents alone, then shuffled among others up to each size of
    long_context_tokens. Ranked on every question (one haystack prefill per group); answers generated
    for the first group's first questions, with the documents alone and in the largest haystack."""
    p = ch.params
    groups = haystack_groups(ch)
    questions = [q for _, asked in groups for q in asked]
    levels = haystack_levels(p, ch.lm.context_window)
    dropped = [t for t in p.long_context_tokens if t not in levels]
    if dropped:  # said, not silently skipped
        print(f"long_context_tokens {dropped} leave no room in {ch.lm.name}'s {ch.lm.context_window:,}-token window "
              f"for the question and the answer ({HAYSTACK_HEADROOM} tokens): those sizes are not run")
    shown_docs, shown = groups[0][0], groups[0][1][: max(1, p.n_generated // 2)]
    out = Section([])
    for target in levels:
        name = f"haystack {target or 'gold only'}"
        parts, n_docs = [], []
        with ch.clock.stage(f"long context {target}"):
            for g, (docs, asked) in enumerate(groups):
                haystack = prompts.build_haystack(docs, ch.kb.documents, target, ch.count_tokens, p.seed + g)
                cands, golds, _ = candidate_lists(ch, asked)
                parts.append(rank_candidates(ch.lm, [_with_documents(ch, q, haystack) for q in asked], cands, golds,
                                             desc=f"{name}, haystack {g + 1}/{len(groups)}", batch_size=p.batch_size))
                n_docs.append(len(haystack))
        merged = Ranking([s for r in parts for s in r.scores], [x for r in parts for x in r.gold],
                         [t for r in parts for t in r.prompt_tokens], sum(r.seconds for r in parts))
        out.ranked.append(add_ranked(ch, name, "long context", questions, merged, False,
                                     documents=sum(n_docs) / len(n_docs)))
        if target in (levels[0], levels[-1]):
            haystack = prompts.build_haystack(shown_docs, ch.kb.documents, target, ch.count_tokens, p.seed)
            with ch.clock.stage(f"long context {target}{GENERATED}"):
                gen = generate(ch.lm, [_with_documents(ch, q, haystack) for q in shown], p.max_new_tokens,
                               p.batch_size, desc=f"{name}{GENERATED}")
            out.generated.append(add_condition(ch, name, "long context", shown, gen, documents=len(haystack),
                                               prefill_s=gen.prefix_prefill_s))
    return out


def conditions_table(*sections: Section) -> pd.DataFrame:
    """The format view: generated answers' scores (contains, EM, F1, refusals), tokens, latency, cost."""
    return report.conditions_table([r for s in sections for r in s.rows()])


def ranked_table(*sections: Section) -> pd.DataFrame:
    """The knowledge view: the share of answerable questions whose gold value the model ranks above
    its look-alikes, with its 95 % interval, against chance; the sections' conditions in run order."""
    lines = {}
    for r in (r for s in sections for r in s.ranked_rows()):
        lines[r["condition"]] = {
            "questions": r["n"], "gold value ranked first [95 % CI]": f"{r['ll_acc']:.0%} [{r['ll_lo']:.0%}, {r['ll_hi']:.0%}]",
            "chance": f"{r['chance']:.0%}", "prompt tokens / query": f"{r['prompt_tokens']:,.0f}",
            "scoring s / question": f"{r['s_per_question']:.2f}"}
    table = pd.DataFrame.from_dict(lines, orient="index")
    table.index.name = "condition"
    return table


def refusal_table(*sections: Section) -> pd.DataFrame:
    """Refusal as a detector, per condition that asked unanswerable questions: the refusal score
    (log-likelihood of the refusal reply minus the best value's) separating unanswerable from
    answerable questions."""
    lines = {}
    for r in (r for s in sections for r in s.ranked_rows()):
        if "refusal_auroc" in r:
            lines[r["condition"]] = {
                "unanswerable / answerable": f"{r['n_unanswerable']} / {r['n']}",
                "refusal preferred, unanswerable": f"{r['refusal_preferred']:.0%}",
                "refusal preferred, answerable": f"{r['false_refusal']:.0%}",
                "AUROC": f"{r['refusal_auroc']:.2f}",
                f"refusal recall at <= {MAX_FALSE_REFUSALS:.0%} false refusals": f"{r['refusal_recall']:.0%}"}
    table = pd.DataFrame.from_dict(lines, orient="index")
    table.index.name = "condition"
    return table


# ---------------------------------------------------------------------------------------------
# Headline metrics, comparisons, sanity properties


def _cost_rule(params) -> dict:
    """How a cost per 1,000 queries may move: exact when only prompt tokens are priced (they are
    deterministic); otherwise it carries the completion tokens, which move with the answers, by at
    most max_new_tokens each."""
    price = load_prices()[params.price_per_mtok]
    if price.get("output_per_mtok") is None:
        return {"kind": "exact"}
    return {"kind": "derived", "tol": 1000 * params.max_new_tokens * price["output_per_mtok"] / 1e6}


def chosen_few_shot(section: Section) -> Ranked | None:
    """The test condition of the k > 0 whose examples rank the gold value first most often on the
    development questions (the first in few_shot_ks order on a tie), or None when no k > 0 ran. The
    test questions play no part in the choice: what the examples add is then measured against k = 0."""
    pool = [c for c in section.ranked if c.group == "development"]
    if not pool:
        return None
    best = max(pool, key=lambda c: c.row["ll_acc"])  # max keeps the first of ties
    return section.named(best.name.removesuffix(DEVELOPMENT))


def headline_metrics(ch: Chapter, f: Findings) -> Measured:
    """The chapter's headline metrics, each declared with its kind on the results file. The
    "_ll_acc" rates are the knowledge scores (all questions of the condition, n in "_n"); the
    "_contains", "_em", "_f1" and "refusal_acc_" rates are the generated answers' (the format view,
    on the first n_generated questions, n in "generated_n" and friends)."""
    c, r = f.answers, f.by_name
    haystacks = [x for x in r.values() if x.group == "long context"]
    lc_gold_only, lc_largest = haystacks[0], haystacks[-1]
    gen_haystacks = [x for x in c.values() if x.group == "long context"]
    best = chosen_few_shot(f) or r["few-shot k=0"]  # few_shot_ks without k > 0: the instruction's scores
    gen_best = c.get(best.name) or c["instruction"]  # k=0's answers are the instruction's
    n_gen = _answerable(c["closed book"].items)
    cost = _cost_rule(ch.params)
    out = Measured()

    def rate(key, value, n):
        out.metric(key, value, "rate", n=n)

    # the format view: generated answers on the first questions
    rate("closed_book_contains", c["closed book"].row["contains"], n_gen)
    rate("instruction_contains", c["instruction"].row["contains"], n_gen)
    rate("few_shot_best_contains", gen_best.row["contains"], _answerable(gen_best.items))
    out.metric("few_shot_best_k", int(best.row["k"]), "choice")  # chosen on development
    out.metric("few_shot_dev_n", len(ch.development), "exact")
    rate("gold_context_contains", c["gold document"].row["contains"], n_gen)
    rate("gold_context_em", c["gold document"].row["em"], n_gen)
    rate("gold_context_wordy", c["gold document"].row["wordy"], n_gen)  # why EM is low: sentences, not phrases
    out.metric("gold_context_f1", c["gold document"].row["f1"], "mean", n=n_gen)
    two_hop = c.get("gold documents, two-hop")
    if two_hop is not None:
        rate("multihop_gold_contains", two_hop.row["contains"], len(two_hop.items))
    rate("long_context_contains", gen_haystacks[-1].row["contains"], len(gen_haystacks[-1].items))
    rate("long_context_gold_only_contains", gen_haystacks[0].row["contains"], len(gen_haystacks[0].items))
    # the knowledge view: candidate log-likelihood on every question of each condition
    out.metric("ll_chance", r["closed book"].row["chance"], "exact")
    for key, cond in (("closed_book", r["closed book"]), ("instruction", r["instruction"]),
                      ("few_shot_best", best), ("gold_context", r["gold document"]),
                      ("multihop_gold", r["gold documents, two-hop"]), ("long_context", lc_largest),
                      ("long_context_gold_only", lc_gold_only)):
        rate(f"{key}_ll_acc", cond.row["ll_acc"], cond.row["n"])
    out.metric("long_context_prompt_tokens", lc_largest.row["prompt_tokens"], "exact")
    for key, cond in (("prompt_tokens_per_query_closed_book", r["closed book"]),
                      ("prompt_tokens_per_query_gold_context", r["gold document"])):
        out.metric(key, cond.row["prompt_tokens"], "exact")
    # refusals: generated (the refuse-or-not answers) and as a detector (threshold-free)
    n_unanswerable = _unanswerable(c["instruction"].items)
    if n_unanswerable:
        for key, cond in (("refusal_acc_instruction", c["instruction"]), ("refusal_acc_gold_context", c["gold document"])):
            rate(key, cond.row["refusal_acc"], n_unanswerable)
    for key, cond in (("closed_book", r["closed book"]), ("instruction", r["instruction"]),
                      ("gold_context", r["gold document"])):
        row = cond.row
        if "refusal_auroc" in row:
            n_pos = row["n_unanswerable"]
            out.metric(f"refusal_auroc_{key}", row["refusal_auroc"], "mean", n=min(n_pos, row["n"]))
            rate(f"refusal_recall_{key}", row["refusal_recall"], n_pos)
            rate(f"refusal_preferred_{key}", row["refusal_preferred"], n_pos)
            rate(f"false_refusal_{key}", row["false_refusal"], row["n"])
    gold_gen, largest_gen = c["gold document"], gen_haystacks[-1]
    for key, cond in (("cost_per_1k_gold_context_usd", gold_gen), ("cost_per_1k_long_context_usd", largest_gen)):
        out.metric(key, cond.row["cost_per_1k_usd"], **cost)
    out.metric("latency_gold_context_s", gold_gen.row["latency_s"], "machine")
    out.metric("latency_long_context_s", largest_gen.row["latency_s"], "machine")
    # The questions behind each headline rate: a change of n is a change of design, never drift.
    ns = (("closed_book_n", r["closed book"].row["n"]), ("instruction_n", r["instruction"].row["n"]),
          ("few_shot_n", best.row["n"]), ("gold_context_n", r["gold document"].row["n"]),
          ("multihop_gold_n", r["gold documents, two-hop"].row["n"]), ("long_context_n", lc_largest.row["n"]),
          ("unanswerable_n", _unanswerable(ch.test)), ("generated_n", n_gen),
          ("generated_unanswerable_n", n_unanswerable), ("long_context_generated_n", len(largest_gen.items)),
          ("multihop_generated_n", len(two_hop.items) if two_hop is not None else 0))
    for key, n in ns:
        out.metric(key, n, "exact")
    return out


def comparisons(ch: Chapter, f: Findings) -> dict[str, StatedComparison]:
    """Every comparison the analysis plan declares for this chapter (ragft.results.state_comparisons), on
    the log-likelihood outcomes, with the run's choices for its placeholders and its arms' labels, keyed
    by comparison id; `save` keeps them on the results file."""
    r = f.by_name
    haystacks = [x for x in r.values() if x.group == "long context"]
    largest = haystacks[-1] if len(haystacks) > 1 else None  # K9: the documents alone against the largest haystack
    # The k is chosen on development questions, so the test questions are not picked in its favour.
    best = chosen_few_shot(f)
    unmeasured = {}
    if largest is None:
        unmeasured["K9-long-context"] = "no haystack size fits the model's context window"
    if best is None:
        unmeasured["prompting-few-shot"] = "few_shot_ks has no k > 0"
    if not _unanswerable(ch.test):
        unmeasured["refusal-instruction"] = "no unanswerable questions"
    choices = {"tokens": largest.name.removeprefix("haystack ") if largest else None, "k": best.row["k"] if best else None}
    labels = {
        # K9: large contexts dilute the signal, so the documents alone score higher
        "K9-long-context": ("the documents alone", f"the {largest.row['prompt_tokens']:,.0f}-token haystack" if largest else ""),
        # K1: the knowledge is in the document, not in the prompt's wording
        "K1-gold-document": ("gold document", "instruction prompt"),
        # examples change the form, not the knowledge: the chapter expects no support here
        "prompting-few-shot": (f"few-shot prompt (k={best.row['k']})" if best else "", "no examples (k=0)"),
        # the instruction makes the refusal the model's first choice on more unanswerable questions
        "refusal-instruction": ("refusals with the instruction", "with a plain prompt"),
    }
    return state_comparisons(CHAPTER, f.measured.outcomes, labels, choices, unmeasured, profile=ch.params.profile)


def sanity_properties(headline: dict) -> pd.DataFrame:
    """The knowledge base's sanity properties as measured: a check on the design, not a comparison.
    Closed book the model should rank the gold value first no more often than chance allows (chance
    plus SANITY_CLOSED_BOOK_MAX); with the gold document, at least SANITY_GOLD_DOCUMENT_MIN."""
    limit = headline["ll_chance"] + SANITY_CLOSED_BOOK_MAX
    closed_best = max(headline["instruction_ll_acc"], headline["few_shot_best_ll_acc"])
    table = pd.DataFrame([
        ("closed book, plain prompt: gold value ranked first", headline["closed_book_ll_acc"],
         f"<= {limit:.0%} (chance + {SANITY_CLOSED_BOOK_MAX:.0%})", headline["closed_book_ll_acc"] <= limit),
        ("best closed-book prompt (instruction or few-shot)", closed_best,
         f"<= {limit:.0%} (chance + {SANITY_CLOSED_BOOK_MAX:.0%})", closed_best <= limit),
        ("gold document in the prompt: gold value ranked first", headline["gold_context_ll_acc"],
         f">= {SANITY_GOLD_DOCUMENT_MIN:.0%}", headline["gold_context_ll_acc"] >= SANITY_GOLD_DOCUMENT_MIN),
    ], columns=["property", "measured", "required", "holds"])
    return table


def sanity_wording(table: pd.DataFrame) -> str:
    """The words the prose glues after "In this run the sanity properties ..."."""
    return "hold" if table["holds"].all() else "do NOT all hold"


def glue_findings(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> None:
    """Everything the prose cites: the headline metrics, the sanity wording, the comparison
    sentences, a few labels."""
    glue_metrics(headline.metrics)
    glue("sanity_holds", sanity_wording(sanity_properties(headline.metrics)))
    for stated in comparisons.values():
        stated.glue()
    glue("price_row", ch.params.price_per_mtok)
    glue("lc_n", len(f.long_context_questions))
    glue("lc_groups", len(haystack_groups(ch)))
    glue("haystack_documents", ch.params.haystack_documents)
    glue("candidates_k", CANDIDATES_K)
    glue("wordy_extra", metrics.WORDY_EXTRA)
    glue("max_false_refusals", MAX_FALSE_REFUSALS)
    for key, text in prose_terms().items():
        glue(key, text)
    glue("model_name", ch.lm.name)
    glue("context_window", ch.lm.context_window)


def save(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> Path:
    """The chapter's one recording step: every condition's outcomes, the headline metrics, the judged
    comparisons and the tables, written to the results file."""
    tables = Measured(tables={"conditions": f.rows(), "ranked": f.ranked_rows()})
    run = ChapterRun(CHAPTER, ch.params, ch.folder, ch.clock)
    return run.save(Measured.merged(f.measured, headline, tables), judged_of(comparisons), lm=ch.lm)
