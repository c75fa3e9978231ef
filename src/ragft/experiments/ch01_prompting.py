"""Chapter 1, prompt engineering and long context: how far prompting alone gets on the knowledge base.

Conditions, in the order the chapter generates them (the order, prompts, batch sizes and seeds are
those of the published numbers, so do not reorder them):

  closed book          the question alone, a plain system prompt
  instruction          the question with an instruction to answer briefly or refuse
  few-shot k=K         the instruction plus K question-answer examples (k=0 reuses the instruction's answers)
  gold document        the document that holds the answer in the prompt
  gold documents, two-hop   both documents of a two-document question
  haystack gold only / haystack T   a few documents, alone and hidden among others up to T tokens

Each condition is recorded per question twice over: the "contains" score of the answerable questions
under its own name, and the refusal (1 when refused) of the unanswerable ones under
"<name> refusal", so scores of different meanings never share a condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .. import metrics, prompts, report
from ..costs import load_prices
from ..generation import Generation, generate
from ..results import ChapterRun, StatedComparison, glue, glue_metrics
from .common import REFUSAL_SUFFIX, record_answers, start

CHAPTER = "01_prompting"
# Tokens a haystack must leave free in the context window for the question and the answer.
HAYSTACK_HEADROOM = 200
# The knowledge base's sanity properties (DESIGN): unknown to the model, readable with the right text.
SANITY_CLOSED_BOOK_MAX = 0.10
SANITY_GOLD_DOCUMENT_MIN = 0.60
GROUPS = ("test", "few-shot", "long context")


@dataclass
class Condition:
    """One prompting condition: the questions asked, the model's answers and their table row."""

    name: str
    group: str  # one of GROUPS: which line or points of the figure it belongs to
    items: list  # ragft.corpus.kb.Question objects, in the order asked
    generation: Generation
    row: dict  # ragft.metrics.condition_row


@dataclass
class Chapter:
    """The chapter's state: parameters, results file, model, knowledge base, question sets and the
    conditions measured so far (in the order they ran)."""

    params: object
    run: ChapterRun
    lm: object
    kb: object
    single: list
    multihop: list
    unanswerable: list
    conditions: dict = field(default_factory=dict)
    long_context_questions: list = field(default_factory=list)

    @property
    def test(self) -> list:
        """The test set: single-fact questions, then unanswerable ones (the order answers are kept in)."""
        return self.single + self.unanswerable

    @property
    def few_shot_items(self) -> list:
        """The few-shot runs' questions: the first n single-fact and n/2 unanswerable test questions."""
        n = self.params.n_few_shot_questions
        return self.single[:n] + self.unanswerable[: max(1, n // 2)]

    def count_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def rows(self, *groups: str) -> list[dict]:
        """Table rows of the conditions in these groups (all when none is named), in run order."""
        return [c.row for c in self.conditions.values() if not groups or c.group in groups]

    def summary(self) -> str:
        lm, kb = self.lm, self.kb
        return (f"{lm.name}: {lm.n_params() / 1e6:.0f} M parameters, {lm.dtype}, {lm.device}, "
                f"context {lm.context_window} tokens\nknowledge base {kb.version}: {len(kb.documents)} "
                f"documents, {len(kb.questions)} questions")


def setup(params) -> Chapter:
    """Seeds, threads and network policy; the model; the knowledge base; the sampled question sets."""
    run, lm, _, kb = start(CHAPTER, params)
    return Chapter(params, run, lm, kb, kb.sample("single", params.n_single, params.seed),
                   kb.sample("multihop", params.n_multihop, params.seed),
                   kb.sample("unanswerable", params.n_unanswerable, params.seed))


def question_examples(ch: Chapter) -> pd.DataFrame:
    """A few test questions of each kind with their gold answers."""
    shown = ch.single[:3] + ch.multihop[:1] + ch.unanswerable[:2]
    return pd.DataFrame([(q.kind, q.test_text, q.answer) for q in shown],
                        columns=["kind", "question (test paraphrase)", "gold answer"])


# ---------------------------------------------------------------------------------------------
# Per-question outcomes


def add_condition(ch: Chapter, name: str, group: str, items: list, gen: Generation, **extra) -> Condition:
    """Score, record and keep a condition whose answers are already generated."""
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not allowed: use one of {list(GROUPS)}")
    if name in ch.conditions:
        raise ValueError(f"condition {name!r} is already measured")
    row = metrics.condition_row(name, gen, items, ch.params.price_per_mtok, **extra)
    record_answers(ch.run, name, items, gen)
    ch.conditions[name] = Condition(name, group, items, gen, row)
    return ch.conditions[name]


def measure(ch: Chapter, name: str, group: str, conversations: list, items: list, stage: str | None = None,
            **extra) -> Condition:
    """Generate the answers of one condition (timed as a stage of the results file), then score it."""
    p = ch.params
    with ch.run.stage(stage or name):
        gen = generate(ch.lm, conversations, p.max_new_tokens, p.batch_size, desc=name)
    return add_condition(ch, name, group, items, gen, **extra)


# ---------------------------------------------------------------------------------------------
# The chapter's sections


def closed_book(ch: Chapter) -> tuple[Condition, Condition]:
    """The test questions alone: with a plain system prompt, then with the instruction."""
    plain = measure(ch, "closed book", "test",
                    [prompts.build_messages(q.test_text, system=prompts.PLAIN_SYSTEM) for q in ch.test], ch.test)
    instructed = measure(ch, "instruction", "test", [prompts.build_messages(q.test_text) for q in ch.test], ch.test)
    return plain, instructed


def few_shot(ch: Chapter) -> list[Condition]:
    """The instruction prompt with k examples from other facts' training paraphrases, for each k of
    few_shot_ks. With no examples the prompt is the instruction prompt, so k=0 reuses its answers."""
    if "instruction" not in ch.conditions:
        raise RuntimeError("run closed_book first: k=0 reuses the instruction prompt's answers")
    items, exclude = ch.few_shot_items, {q.qid for q in ch.test}
    out = []
    for k in ch.params.few_shot_ks:
        name = f"few-shot k={k}"
        if k == 0:
            subset = ch.conditions["instruction"].generation.subset([ch.test.index(q) for q in items])
            out.append(add_condition(ch, name, "few-shot", items, subset, k=0))
            continue
        examples = prompts.few_shot_examples(ch.kb.questions, k, exclude, ch.params.seed)
        conversations = [prompts.build_messages(q.test_text, examples=examples) for q in items]
        out.append(measure(ch, name, "few-shot", conversations, items, k=k))
    return out


def _with_documents(ch: Chapter, question, documents: list[str] | None = None) -> list[dict]:
    documents = documents if documents is not None else [ch.kb.doc(d).text for d in question.context_doc_ids]
    return prompts.build_messages(question.test_text, system=prompts.CONTEXT_SYSTEM, passages=documents)


def gold_documents(ch: Chapter) -> tuple[Condition, Condition]:
    """The document that holds the answer in the prompt (the nearest one for an unanswerable
    question), and both documents of each two-document question."""
    gold = measure(ch, "gold document", "test", [_with_documents(ch, q) for q in ch.test], ch.test)
    two_hop = measure(ch, "gold documents, two-hop", "test", [_with_documents(ch, q) for q in ch.multihop],
                      ch.multihop)
    return gold, two_hop


def answer_examples(ch: Chapter) -> pd.DataFrame:
    """The same few test questions (four answerable, two unanswerable) under three conditions."""
    test = ch.test
    shown = ([i for i, q in enumerate(test) if q.kind == "single"][:4]
             + [i for i, q in enumerate(test) if q.kind == "unanswerable"][:2])
    table = {"question": [test[i].test_text for i in shown], "gold": [test[i].answer for i in shown]}
    for name in ("closed book", "instruction", "gold document"):
        table[name] = [ch.conditions[name].generation.texts[i] for i in shown]
    return pd.DataFrame(table)


def haystack_levels(params, context_window: int) -> list[int]:
    """Haystack sizes to run: 0 (the gold documents alone), then each size that leaves room in the
    window for the question and the answer."""
    return [0] + [t for t in params.long_context_tokens if t + HAYSTACK_HEADROOM < context_window]


def long_context(ch: Chapter) -> list[Condition]:
    """A few documents and all their single-fact questions, asked against one shared haystack: the
    documents alone, then shuffled among others up to each size of long_context_tokens."""
    p = ch.params
    documents, questions = ch.kb.questions_about_documents(p.n_long_context_questions, p.seed)
    ch.long_context_questions = questions
    out = []
    for target in haystack_levels(p, ch.lm.context_window):
        haystack = prompts.build_haystack(documents, ch.kb.documents, target, ch.count_tokens, p.seed)
        conversations = [_with_documents(ch, q, haystack) for q in questions]
        name = f"haystack {target or 'gold only'}"
        with ch.run.stage(f"long context {target}"):
            gen = generate(ch.lm, conversations, p.max_new_tokens, p.batch_size, desc=f"haystack {target}")
        out.append(add_condition(ch, name, "long context", questions, gen, documents=len(haystack),
                                 prefill_s=gen.prefix_prefill_s))
    return out


def conditions_table(ch: Chapter, *groups: str) -> pd.DataFrame:
    return report.conditions_table(ch.rows(*groups))


# ---------------------------------------------------------------------------------------------
# The figure


def plot_accuracy_vs_tokens(ch: Chapter):
    """Gold answer contained (with its 95 % Wilson interval) against prompt tokens per query: the
    test-set conditions as points, few-shot and haystacks as lines."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def errors(frame):
        return [frame["contains"] - frame["contains_lo"], frame["contains_hi"] - frame["contains"]]

    points = pd.DataFrame(ch.rows("test")).set_index("condition")
    shots = pd.DataFrame(ch.rows("few-shot")).set_index("condition")
    haystacks = pd.DataFrame(ch.rows("long context")).set_index("condition")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(points["prompt_tokens"], points["contains"], yerr=errors(points), fmt="o", color="C0",
                capsize=3, label="test set conditions")
    for name, r in points.iterrows():
        ax.annotate(name, (r["prompt_tokens"], r["contains"]), fontsize=8, xytext=(4, 6), textcoords="offset points")
    if len(shots):
        ax.errorbar(shots["prompt_tokens"], shots["contains"], yerr=errors(shots), fmt="s-", color="C2", capsize=3,
                    label="few-shot, k = " + ", ".join(str(int(k)) for k in shots["k"]))
    ax.errorbar(haystacks["prompt_tokens"], haystacks["contains"], yerr=errors(haystacks), fmt="o--", color="C3",
                capsize=3, label="long-context haystacks")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.set_xlabel("prompt tokens per query (log scale)")
    ax.set_ylabel("gold answer contained (95 % interval)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{ch.lm.name}: accuracy against prompt tokens")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Headline metrics, comparisons, sanity properties


def _answerable(items: list) -> int:
    return sum(q.kind != "unanswerable" for q in items)


def _unanswerable(items: list) -> int:
    return sum(q.kind == "unanswerable" for q in items)


def _cost_rule(params) -> dict:
    """How a cost per 1,000 queries may move: exact when only prompt tokens are priced (they are
    deterministic); otherwise it carries the completion tokens, which move with the answers, by at
    most max_new_tokens each."""
    price = load_prices()[params.price_per_mtok]
    if price.get("output_per_mtok") is None:
        return {"kind": "exact"}
    return {"kind": "derived", "tol": 1000 * params.max_new_tokens * price["output_per_mtok"] / 1e6}


def few_shot_conditions(ch: Chapter) -> list[Condition]:
    return [c for c in ch.conditions.values() if c.group == "few-shot"]


def best_few_shot(ch: Chapter, with_examples: bool = False) -> Condition | None:
    """The few-shot condition with the highest "contains" (the first in few_shot_ks order on a tie);
    with_examples: among k > 0 only (what the examples add is then measured against k = 0)."""
    pool = [c for c in few_shot_conditions(ch) if c.row["k"] > 0 or not with_examples]
    return max(pool, key=lambda c: c.row["contains"]) if pool else None  # max keeps the first of ties


def headline_metrics(ch: Chapter) -> dict:
    """The chapter's headline metrics, each declared with its kind on the results file."""
    run, c = ch.run, ch.conditions
    closed, instructed, gold, two_hop = c["closed book"], c["instruction"], c["gold document"], c["gold documents, two-hop"]
    haystacks = [x for x in c.values() if x.group == "long context"]
    gold_only, largest = haystacks[0], haystacks[-1]
    best = best_few_shot(ch)
    n_test, n_unanswerable = _answerable(ch.test), _unanswerable(ch.test)
    n_long = len(ch.long_context_questions)
    cost = _cost_rule(ch.params)
    out = {
        "closed_book_contains": run.metric("closed_book_contains", closed.row["contains"], "rate", n=n_test),
        "instruction_contains": run.metric("instruction_contains", instructed.row["contains"], "rate", n=n_test),
        "few_shot_best_contains": run.metric("few_shot_best_contains", best.row["contains"], "rate",
                                             n=_answerable(best.items)),
        "few_shot_best_k": run.metric("few_shot_best_k", int(best.row["k"]), "choice"),
        "gold_context_contains": run.metric("gold_context_contains", gold.row["contains"], "rate", n=n_test),
        "gold_context_em": run.metric("gold_context_em", gold.row["em"], "rate", n=n_test),
        "gold_context_f1": run.metric("gold_context_f1", gold.row["f1"], "mean", n=n_test),
        "multihop_gold_contains": run.metric("multihop_gold_contains", two_hop.row["contains"], "rate",
                                             n=len(two_hop.items)),
        "long_context_contains": run.metric("long_context_contains", largest.row["contains"], "rate", n=n_long),
        "long_context_gold_only_contains": run.metric("long_context_gold_only_contains", gold_only.row["contains"],
                                                      "rate", n=n_long),
        "long_context_prompt_tokens": run.metric("long_context_prompt_tokens", largest.row["prompt_tokens"], "exact"),
        "prompt_tokens_per_query_closed_book": run.metric("prompt_tokens_per_query_closed_book",
                                                          closed.row["prompt_tokens"], "exact"),
        "prompt_tokens_per_query_gold_context": run.metric("prompt_tokens_per_query_gold_context",
                                                           gold.row["prompt_tokens"], "exact"),
    }
    if n_unanswerable:
        for key, cond in (("refusal_acc_instruction", instructed), ("refusal_acc_gold_context", gold)):
            out[key] = run.metric(key, cond.row["refusal_acc"], "rate", n=n_unanswerable)
    for key, cond in (("cost_per_1k_gold_context_usd", gold), ("cost_per_1k_long_context_usd", largest)):
        out[key] = run.metric(key, cond.row["cost_per_1k_usd"], **cost)
    out["latency_gold_context_s"] = run.metric("latency_gold_context_s", gold.row["latency_s"], "machine")
    out["latency_long_context_s"] = run.metric("latency_long_context_s", largest.row["latency_s"], "machine")
    # The questions behind each headline rate: a change of n is a change of design, never drift.
    for key, n in (("closed_book_n", n_test), ("instruction_n", n_test), ("few_shot_n", _answerable(best.items)),
                   ("gold_context_n", n_test), ("multihop_gold_n", len(two_hop.items)), ("long_context_n", n_long),
                   ("unanswerable_n", n_unanswerable)):
        out[key] = run.metric(key, n, "exact")
    return out


def state_comparisons(ch: Chapter) -> dict[str, StatedComparison]:
    """The chapter's paired comparisons (claim ids of CLAIMS.md, or descriptive ones), stored on the
    results file; keyed by glue key."""
    run, c = ch.run, ch.conditions
    out: dict[str, StatedComparison] = {}

    haystacks = [x for x in c.values() if x.group == "long context"]
    if len(haystacks) > 1:  # K9: large contexts dilute the signal, so the documents alone score higher
        largest = haystacks[-1]
        cmp = run.compare("K9-long-context", haystacks[0].name, largest.name, expect="greater")
        out["k9_long_context"] = StatedComparison("k9_long_context", cmp, "the documents alone",
                                                  f"the {largest.row['prompt_tokens']:,.0f}-token haystack")
    else:
        out["k9_long_context"] = StatedComparison("k9_long_context", None, "", "",
                                                  "no haystack size fits the model's context window")

    # K1: the knowledge is in the document, not in the prompt's wording.
    cmp = run.compare("K1-gold-document", "gold document", "instruction", expect="greater")
    out["k1_gold_document"] = StatedComparison("k1_gold_document", cmp, "gold document", "instruction prompt")

    # Examples change the form, not the knowledge: the chapter expects no support here. Picking the
    # best of several k before testing favours "supported", so a supported verdict is an upper bound.
    best = best_few_shot(ch, with_examples=True)
    baseline = "few-shot k=0" if "few-shot k=0" in c else "instruction"  # the same answers on the same questions
    if best is not None:
        cmp = run.compare("prompting-few-shot", best.name, baseline, expect="greater")
        out["few_shot_examples"] = StatedComparison("few_shot_examples", cmp, f"best few-shot prompt (k={best.row['k']})",
                                                    "no examples (k=0)")
    else:
        out["few_shot_examples"] = StatedComparison("few_shot_examples", None, "", "", "few_shot_ks has no k > 0")

    refusals = ("instruction" + REFUSAL_SUFFIX, "closed book" + REFUSAL_SUFFIX)
    if all(r in run.outcomes for r in refusals):
        cmp = run.compare("refusal-instruction", *refusals, expect="greater")
        out["refusal_instruction"] = StatedComparison("refusal_instruction", cmp, "refusals with the instruction",
                                                      "with a plain prompt")
    else:
        out["refusal_instruction"] = StatedComparison("refusal_instruction", None, "", "", "no unanswerable questions")
    return out


def sanity_properties(headline: dict) -> pd.DataFrame:
    """The knowledge base's sanity properties as measured: a check on the design, not a comparison."""
    closed_best = max(headline["instruction_contains"], headline["few_shot_best_contains"])
    table = pd.DataFrame([
        ("closed book, plain prompt: gold answer contained", headline["closed_book_contains"],
         f"<= {SANITY_CLOSED_BOOK_MAX:.0%}", headline["closed_book_contains"] <= SANITY_CLOSED_BOOK_MAX),
        ("best closed-book prompt (instruction or few-shot)", closed_best,
         f"<= {SANITY_CLOSED_BOOK_MAX:.0%}", closed_best <= SANITY_CLOSED_BOOK_MAX),
        ("gold document in the prompt: gold answer contained", headline["gold_context_contains"],
         f">= {SANITY_GOLD_DOCUMENT_MIN:.0%}", headline["gold_context_contains"] >= SANITY_GOLD_DOCUMENT_MIN),
    ], columns=["property", "measured", "required", "holds"])
    return table


def sanity_wording(table: pd.DataFrame) -> str:
    """The words the prose glues after "In this run the sanity properties ..."."""
    return "hold" if table["holds"].all() else "do NOT all hold"


def glue_findings(ch: Chapter, headline: dict, comparisons: dict[str, StatedComparison]) -> None:
    """Everything the prose cites: the headline metrics, the sanity wording, the comparison
    sentences, a few labels."""
    glue_metrics(headline)
    glue("sanity_holds", sanity_wording(sanity_properties(headline)))
    for stated in comparisons.values():
        stated.glue()
    glue("price_row", ch.params.price_per_mtok)
    glue("lc_n", len(ch.long_context_questions))
    glue("model_name", ch.lm.name)
    glue("context_window", ch.lm.context_window)


def save(ch: Chapter):
    ch.run.tables["conditions"] = ch.rows()
    return ch.run.save(lm=ch.lm)
