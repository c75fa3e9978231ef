"""Chapter 4, RAFT: a model fine-tuned to read retrieved documents, set beside RAG and DSF.

Sections, in the order the chapter runs them, each returning what it measured:

  main table   `main_table(ch)` -> MainTable: the base model closed book and with RAG, chapter 3's
               closed-book fine-tune (DSF) alone and with RAG, RAFT (and, where the profile measures
               F4, RAFT without the chain of thought), on the same retrieved chunks; RAFT's fitness on
               the development questions and its development row (`development_table`)
  ablations    `ablations(ch, main)` -> Ablations: RAFT trained with the oracle kept in a share P of
               the examples (F2), and with fewer distractors per example (F5), on the fact questions
  top-k        `top_k_curves(ch, main, ablations)` -> Curves: the base reader and RAFT at every
               test-time top-k, the fewest-distractor RAFT at the main table's and the largest (F5, F6)
  benchmarks   `benchmark_rows(ch)` -> Benchmarks: PubMedQA (label accuracy) and HotpotQA (answer F1)
               rows, when the data folder is there

`Findings(main, ablations, curves, bench)` then feeds `headline_metrics`, `comparisons` and
`glue_findings`; `save`, the one recording step, writes them with every section's per-question
outcomes (each section returns its own, a `Measured`) to the results file. `Chapter` holds the
set-up only.

How a reader is scored. Knowledge-base questions are scored by candidate log-likelihood: the gold
value and `n_candidates` look-alike values of the same attribute (`KnowledgeBase.candidates`, chance
1 / (n + 1)) are ranked by the model's log-likelihood as its reply (`raft.read`). A reader that
quotes before answering (RAFT) first generates its reply, and the candidates are scored after its own
reasoning and the final-answer marker, on the generation's own KV cache. LoRA readers answer with
their adapter merged. The refusal reply is ranked beside them: its log-likelihood
minus the best value's is a refusal score, reported as AUROC and as refusal recall at <= 5 % false
refusals. Generated answers stay on a subset (`n_generated` facts, `n_generated_unanswerable`
unanswerable questions) for the format view (contains, EM, F1, refusals said in words); the quoting
reader is generated on every question, since its scoring needs its reasoning.

Every scored condition is recorded per question (the knowledge-base question's qid, the benchmark
item's id): "<condition>" holds 1 or 0 for the gold ranked first (the main table's names in MAIN,
the ablations' "RAFT P=<p>" and "RAFT <d> distractors", the curves' "<reader>, top-<k>");
"<condition> (generated)" 1 or 0 for a generated answer that contains the gold (what
`raft.score_row` scores) and "<condition> (generated) refusal" for each unanswerable question
refused in words. The benchmarks' are "PubMedQA <reader>" (1 when the label of highest
log-likelihood is the gold one, and "PubMedQA majority class" beside them) and "HotpotQA <reader>" (answer F1 of the generated reply, a
continuous outcome).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config, handover, metrics, prose, raft, rag, report
from ..constants import REFUSAL_ANSWER
from ..corpus import benchmarks
from ..drift import rate_tolerance
from ..generation import Generation
from ..models import max_chunk_tokens
from ..results import ChapterRun, Clock, Measured, judged_of, state_comparisons
from ..prose import StatedComparison, glue
from ..scoring import Ranking
from ..stats import MAX_FALSE_REFUSALS, auroc, mean_interval, recall_at_fpr, wilson_interval
from ..train import example, tasks, units
from ..train.measure import release_memory
from ..plan import seed_tag, the_plan
from .common import (answer_outcomes, chapter3_facts, dsf_model as common_dsf_model, elsewhere_label, not_here, merge_seeds,
                     seeded, start, training_seeds)

CHAPTER = "04_raft"
PUBMEDQA_LABELS = ("yes", "no", "maybe")
GENERATED = " (generated)"  # the suffix of a condition's generated answers (the format view)
# Outcome names of the main table's conditions, by metric key prefix (run order).
MAIN = {"base_closed": "base closed", "base_rag": "base + RAG", "dsf": "DSF closed", "dsf_rag": "DSF + RAG",
        "reader_dsf": "DSF from documents closed", "reader_dsf_rag": "DSF from documents + RAG",
        "raft_rag": "RAFT + RAG", "reader_raft_rag": "RAFT from documents + RAG", "raft_nocot_rag": "RAFT no-CoT + RAG"}
BASE_READER = "base + RAG"  # the base reader's column in the top-k curves
# The comparisons each optional section serves: a profile whose plan entry leaves all of them to other
# profiles (the plan's `profiles`) skips the section, and its figure and sentences say why.
ABLATION_COMPARISONS = ("F2-best-p", "F5-distractors")
TOPK_COMPARISONS = ("F5-topk-robust", "F6-fewer-chunks")
PUBMEDQA_COMPARISONS = ("F3-pubmedqa",)
HOTPOTQA_COMPARISONS = ("F3-hotpotqa",)
NOCOT_COMPARISONS = ("F4-cot",)  # the only comparison of the reader trained without the chain of thought
# Benchmark rows that become headline metrics: (benchmark, reader, column, metric key).
BENCH_METRICS = [("PubMedQA", "RAFT + RAG", "acc", "pubmedqa_raft_acc"), ("PubMedQA", "base + RAG", "acc", "pubmedqa_base_rag_acc"),
                 ("PubMedQA", "majority class", "acc", "pubmedqa_majority_acc"),
                 ("PubMedQA", "RAFT + RAG", "macro_f1", "pubmedqa_raft_macro_f1"),
                 ("PubMedQA", "base + RAG", "macro_f1", "pubmedqa_base_rag_macro_f1"),
                 ("PubMedQA", "base, closed book", "acc", "pubmedqa_base_closed_acc"),
                 ("HotpotQA", "RAFT + RAG", "f1", "hotpotqa_raft_f1"), ("HotpotQA", "base + RAG", "f1", "hotpotqa_base_rag_f1"),
                 ("HotpotQA", "RAFT + RAG", "em", "hotpotqa_raft_em"), ("HotpotQA", "base + RAG", "em", "hotpotqa_base_rag_em"),
                 ("HotpotQA", "base, closed book", "f1", "hotpotqa_base_closed_f1"),
                 ("PubMedQA", "base, closed book", "macro_f1", "pubmedqa_base_closed_macro_f1"),
                 ("HotpotQA", "RAFT + RAG", "contains", "hotpotqa_raft_contains"),
                 ("HotpotQA", "base + RAG", "contains", "hotpotqa_base_rag_contains"),
                 ("HotpotQA", "RAFT + RAG", "marker_rate", "hotpotqa_raft_marker_rate"),
                 ("PubMedQA", "RAFT + RAG", "marker_rate", "pubmedqa_raft_marker_rate")]


@dataclass
class Chapter:
    """The chapter's set-up: parameters, results file, models, the index, the questions and RAFT's
    training sources. What each section measures is its own return value (`MainTable`, `Ablations`,
    `Curves`, `Benchmarks`), handed on explicitly."""

    params: object
    dsf_params: object  # chapter 3's parameters for the same profile and model: the DSF rows are its fine-tune
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    lm: object
    embed_model: object
    kb: object
    retriever: object
    chunks: list
    facts: list  # chapter 3's test facts
    test_items: list  # the facts (held-out paraphrase), then the unanswerable questions
    candidates: list  # per test item: (values to rank, index of the gold or None for an unanswerable one)
    oracles: list  # per test item: the chunks that hold its gold sentence
    ranked: list  # per test item: hybrid hits up to max(top_ks)
    train_sources: list  # RAFT's training questions: other facts, never a test fact
    hard: dict | None  # retrieved hard negatives per training qid (distractors="retrieved")
    main_records: list
    jsonl: Path
    dev: "DevQuestions"  # RAFT's development questions: its fitness is measured there, never on a test fact
    facts_source: str = ""  # where the test facts came from
    seeds: list = field(default_factory=list)  # a seeded draw's training seeds (chapter 3's parameters), else []
    reader_records: list = field(default_factory=list)  # a seeded draw's: the reader's RAFT, from the rule's questions

    @property
    def k(self) -> int:
        return self.params.rag_top_k

    @property
    def facts_only(self) -> list[int]:
        """Positions of the answerable test items (the ablations and curves ask the first of them,
        `ablation_facts`)."""
        return [i for i, it in enumerate(self.test_items) if it.kind != "unanswerable"]

    @property
    def ablation_facts(self) -> list[int]:
        """Positions of the facts the ablations and top-k curves ask: the first n_ablation_facts (every
        RAFT variant there generates its quote on each, the chapter's largest cost)."""
        return self.facts_only[:self.params.n_ablation_facts or None]

    @property
    def ablation_qids(self) -> list[str]:
        return [self.test_items[i].qid for i in self.ablation_facts]

    @property
    def generated(self) -> list[int]:
        """Positions of the test items also answered in words: the first n_generated facts and the
        first n_generated_unanswerable unanswerable questions."""
        p = self.params
        unanswerable = [i for i, it in enumerate(self.test_items) if it.kind == "unanswerable"]
        return self.facts_only[:p.n_generated] + unanswerable[:p.n_generated_unanswerable]

    @property
    def generated_facts(self) -> list[int]:
        return self.facts_only[:self.params.n_generated]

    @property
    def least_distractors(self) -> int:
        return min(self.params.distractor_counts)

    @property
    def raft_reader(self) -> str:
        return f"RAFT, {self.params.n_distractors} distractors"

    @property
    def least_reader(self) -> str:
        return f"RAFT, {self.least_distractors} distractors"

    def summary(self) -> str:
        n_facts = len(self.facts)
        return (f"{len(self.chunks)} chunks of up to {self.params.chunk_size} tokens; {n_facts} test facts "
                f"({self.facts_source}) and {len(self.test_items) - n_facts} unanswerable questions, "
                f"{len(self.generated)} of them also answered in words; {len(self.train_sources)} RAFT training "
                f"questions, written to {self.jsonl.name}")


def setup(params) -> Chapter:
    """Seeds, threads and network policy; the model and the embedder; the knowledge base indexed in
    Chroma in chunks; the test questions and their retrieved chunks; RAFT's training sources and the
    main variant's data, written as JSONL."""
    dsf_params = config.resolve(handover.DSF_CHAPTER, params.profile, model=params.model, device=params.device)
    folder, clock, lm, embed_model, kb = start(CHAPTER, params, embedder=True)
    facts, facts_source = chapter3_facts(kb, dsf_params)
    with clock.stage("index"):
        store = rag.kb_store(kb, params.chunk_size, embed_model, folder / "chroma" / CHAPTER)
    retriever = rag.Retriever(store, embed_model)
    chunks = store.all_chunks()
    asked = facts + kb.sample("unanswerable", params.n_unanswerable, params.seed)
    test_items = rag.kb_items(asked)
    candidates = [kb.candidates(q, params.n_candidates, params.seed) for q in asked]
    oracles = [[c.text for c in chunks if it.is_relevant(c.doc_id, c.text)] for it in test_items]
    ranked = retriever.search([it.question for it in test_items], max(params.top_ks), "hybrid")
    train_sources, others = raft.training_sources(kb, {q.qid for q in facts}, chunks, params.n_train, params.seed)
    dev = development_questions(kb, retriever, chunks, others, {s.qid for s in train_sources}, params)
    hard = raft.hard_negatives(retriever, train_sources, params)
    ch = Chapter(params, dsf_params, clock, folder, lm, embed_model, kb, retriever, chunks, facts, test_items, candidates,
                 oracles, ranked, train_sources, hard, [], Path(), dev, facts_source=facts_source)
    ch.main_records = raft_data(ch)  # the main variant's training data, written once for the reader to see
    ch.jsonl = raft.save_jsonl(ch.main_records, folder / "raft" / "kb_train.jsonl")
    if seeded(dsf_params):  # a draw with the study: every RAFT per seed, and the reader's RAFT beside the gold one
        ch.seeds = training_seeds(dsf_params)
        cloze = raft.cloze_sources(kb, chunks, len(train_sources), params.seed)
        ch.reader_records = raft.records(cloze, chunks, params, hard=raft.hard_negatives(retriever, cloze, params))
    return ch



@dataclass
class DevQuestions:
    """RAFT's development questions: knowledge-base facts that are neither test facts nor training
    questions, asked in their held-out paraphrase with the main table's top-k chunks."""

    questions: list[str]
    docs: list[list[str]]
    values: list[list[str]]  # the gold and its look-alikes
    gold: list[int]
    oracles: list[list[str]]  # the chunks that hold each question's gold sentence


def development_questions(kb, retriever, chunks: list, others: list, training: set[str], params) -> DevQuestions:
    """The last n_dev of `others` (the facts that are not test facts, in their seeded order; training
    takes the first ones) that a chunk holds whole; refused when they would meet a training question."""
    sources = raft.kb_sources(list(reversed(others)), chunks, "test", params.seed)[:params.n_dev]
    if len(sources) < params.n_dev or {s.qid for s in sources} & training:
        raise ValueError(f"n_train={params.n_train} and n_dev={params.n_dev}: the knowledge base has {len(others)} facts "
                         "besides the test facts, too few for both without sharing one; lower either or grow kb")
    by_id = {q.qid: q for q in others}
    candidates = [kb.candidates(by_id[s.qid], params.n_candidates, params.seed) for s in sources]
    hits = retriever.search([s.question for s in sources], params.rag_top_k, "hybrid")
    return DevQuestions([s.question for s in sources], [[h.text for h in row] for row in hits],
                        [values for values, _ in candidates], [gold for _, gold in candidates],
                        [list(s.oracles) for s in sources])


@dataclass
class RaftFitness:
    n: int
    quote_marker: float  # replies that quote only oracle text and reach the answer marker
    acc: float  # gold ranked first after its own reasoning
    base_acc: float  # the base reader's, with the same chunks
    quote: float = float("nan")  # replies that quote only oracle text
    marker: float = float("nan")  # replies that reach the answer marker

    @property
    def met(self) -> bool:
        """The plan's `raft` rule: replies that quote an oracle and replies that reach the marker, each at
        its bar, and more gold values ranked first than the base reader."""
        rule = the_plan().fitness["raft"]
        return self.quote >= rule["quote_min"] and self.marker >= rule["marker_min"] and self.acc > self.base_acc


def raft_fitness(ch: Chapter, raft_lm) -> RaftFitness:
    """The plan's `raft` fitness rule measured on the development questions (`Chapter.dev`)."""
    p, dev = ch.params, ch.dev
    gen, ranking = raft.read(raft_lm, dev.questions, dev.docs, "raft", dev.values, dev.gold, p.cot_max_new_tokens,
                             p.batch_size, "RAFT, development questions")
    _, base = raft.read(ch.lm, dev.questions, dev.docs, "rag", dev.values, dev.gold, p.max_new_tokens, p.batch_size,
                        "base + RAG, development questions")
    quoted = [raft.quote_correct(t, o) == 1.0 for t, o in zip(gen.texts, dev.oracles)]
    marked = [raft.reached_marker(t) for t in gen.texts]
    both = [q and m for q, m in zip(quoted, marked)]
    return RaftFitness(len(both), sum(both) / len(both), ranking.accuracy, base.accuracy, sum(quoted) / len(quoted),
                       sum(marked) / len(marked))


def development_table(ch: Chapter, main: "MainTable") -> pd.DataFrame:
    """The RAFT configurations trained in this run with their fitness on the development questions (the
    plan's `raft` rule): one row per RAFT and training seed on a seeded draw (the rule holds each seed),
    else the one RAFT the plan's choices name; with the training tokens each cost."""
    p = ch.params
    fits = main.fitness_per_seed
    trained = main.seed_training or {"raft_rag": [main.raft.metrics]}
    rows = []
    for key, seeds in fits.items():
        for s, (fit_, m) in enumerate(zip(seeds, trained[key])):
            rows.append({"reader": MAIN[key], "seed": p.seed + s, "n_train": m["examples"],
                         "epochs": p.epochs, "batch": p.train_batch_size, "rank": p.lora_rank, "lr": p.lora_lr,
                         "p_oracle": p.p_oracle, "distractors": p.n_distractors, "train_tokens": m["train_tokens"],
                         "n_dev": fit_.n, "quote": fit_.quote, "marker": fit_.marker, "quote_marker": fit_.quote_marker,
                         "acc": fit_.acc, "base_acc": fit_.base_acc, "met": int(fit_.met)})
    return pd.DataFrame(rows)


def example_record(ch: Chapter) -> pd.DataFrame:
    """One training example as the model sees it, and its target."""
    first = ch.main_records[0]
    return pd.DataFrame([{"prompt": first.messages()[-1]["content"], "target": first.target}])


# ---------------------------------------------------------------------------------------------
# Training, asking, scoring


def raft_data(ch: Chapter, p: float | None = None, k: int | None = None, cot: bool = True) -> list:
    """RAFT records of the training sources (raft.records): one seed for every variant, which differ
    in P, k or the target, not in their questions."""
    return raft.records(ch.train_sources, ch.chunks, ch.params, p, k, cot, ch.hard)


def fit(ch: Chapter, records: list, label: str):
    """A LoRA fine-tune on RAFT records with this chapter's parameters (raft.train_reader)."""
    return raft.train_reader(ch.params, records, label)


def ask(ch: Chapter, model_lm, style: str, k: int, desc: str, idx: list[int] | None = None) -> Generation:
    """Answers of one reader to the test items at positions `idx` (all by default), reading their top-k
    chunks (none when k is 0). The quoting reader gets room for its quote; the others answer short."""
    idx = range(len(ch.test_items)) if idx is None else idx
    p = ch.params
    limit = p.cot_max_new_tokens if style == "raft" else p.max_new_tokens
    docs = [[h.text for h in ch.ranked[i][:k]] for i in idx] if k else None
    return raft.ask(model_lm, [ch.test_items[i].question for i in idx], docs, style, limit, p.batch_size, desc=desc)


def score(ch: Chapter, into: Measured, label: str, outcome: str, gen: Generation, idx: list[int] | None = None,
          quoting: bool = False, **extra) -> dict:
    """A table row for a reader's generated answers to the items at `idx` (`raft.score_row`), its
    outcomes kept in `into`, the calling step's own record, under `outcome` (and `outcome + " refusal"`
    for unanswerable items)."""
    idx = list(range(len(ch.test_items))) if idx is None else list(idx)
    items = [ch.test_items[i] for i in idx]
    # scored as raft.score_row scores
    into.update(answer_outcomes(outcome, items, gen, raft.answers_of(gen.texts)))
    return raft.score_row(label, gen, items, [ch.oracles[i] for i in idx] if quoting else None,
                          ch.params.price_per_mtok, **extra)


@dataclass
class Scored:
    """A reader's candidate ranking on some test items (`raft.read`): the values alone on the
    answerable items (`ranking`, qids `qids`), and a refusal score on every item, the refusal
    reply's log-likelihood minus the best value's (unanswerable items: `refuse_pos`, answerable:
    `refuse_neg`)."""

    ranking: object
    qids: list
    refuse_pos: list
    refuse_neg: list
    prompt_tokens: float

    @property
    def outcomes(self) -> dict:
        return self.ranking.outcomes(self.qids)

    @property
    def acc(self) -> float:
        return self.ranking.accuracy

    def refusal(self) -> tuple[float, float]:
        """(AUROC, refusal recall at <= 5 % false refusals), NaN without both kinds of question."""
        if not self.refuse_pos or not self.refuse_neg:
            return float("nan"), float("nan")
        return auroc(self.refuse_pos, self.refuse_neg), recall_at_fpr(self.refuse_pos, self.refuse_neg)[0]

    def only(self, qids: list[str]) -> "Scored":
        """The same reader's scores on the answerable items among `qids` (a subset of its run)."""
        keep = set(qids)
        js = [j for j, q in enumerate(self.qids) if q in keep]
        r = self.ranking
        ranking = Ranking([r.scores[j] for j in js], [r.gold[j] for j in js], [r.prompt_tokens[j] for j in js], r.seconds)
        return Scored(ranking, [self.qids[j] for j in js], [], [self.refuse_neg[j] for j in js],
                      sum(ranking.prompt_tokens) / max(1, len(js)))

    def row(self) -> dict:
        area, recall = self.refusal()
        lo, hi = wilson_interval(sum(self.ranking.correct), len(self.qids))
        return {"acc": self.acc, "acc_lo": lo, "acc_hi": hi, "chance": self.ranking.chance, "n": len(self.qids),
                "refusal_auroc": area, "refusal_recall": recall, "scored_prompt_tokens": self.prompt_tokens}


def rank(ch: Chapter, model_lm, style: str, k: int, idx: list[int] | None = None,
         desc: str = "scoring") -> tuple[Scored, Generation | None]:
    """A reader's candidate log-likelihoods on the items at `idx` (all by default), reading their top-k
    chunks (`raft.read`); a quoting reader ("raft") generates its reasoning first and is scored after
    it, and its generation is returned (else None)."""
    p = ch.params
    idx = list(range(len(ch.test_items))) if idx is None else list(idx)
    docs = [[h.text for h in ch.ranked[i][:k]] for i in idx] if k else None
    values = [ch.candidates[i][0] for i in idx]
    gold = [0 if ch.candidates[i][1] is None else ch.candidates[i][1] for i in idx]
    gen, r = raft.read(model_lm, [ch.test_items[i].question for i in idx], docs, style,
                       [v + [REFUSAL_ANSWER] for v in values], gold, p.cot_max_new_tokens, p.batch_size, desc)
    answerable = [j for j, i in enumerate(idx) if ch.candidates[i][1] is not None]
    refuse = [s[-1] - max(s[:-1]) for s in r.scores]
    ranking = Ranking([r.scores[j][:-1] for j in answerable], [gold[j] for j in answerable],
                      [r.prompt_tokens[j] for j in answerable], r.seconds)
    return Scored(ranking, [ch.test_items[idx[j]].qid for j in answerable],
                  [refuse[j] for j in range(len(idx)) if j not in set(answerable)], [refuse[j] for j in answerable],
                  sum(r.prompt_tokens) / len(idx)), gen


def read(ch: Chapter, into: Measured, model_lm, style: str, k: int, name: str,
         idx: list[int] | None = None) -> tuple[Scored, Generation | None]:
    """A reader scored by candidate log-likelihood on the items at `idx`, its outcomes kept in `into`
    (the calling step's own record) under `name`; a quoting reader ("raft") first generates its
    reasoning on the same items (returned, else None)."""
    sc, gen = rank(ch, model_lm, style, k, idx, name)
    into.record(name, sc.outcomes)
    return sc, gen


def marker_rate(gen: Generation) -> float:
    """The share of a quoting reader's replies that reach the final-answer marker."""
    return sum(map(raft.reached_marker, gen.texts)) / max(1, len(gen.texts))


# ---------------------------------------------------------------------------------------------
# The DSF model: chapter 3's, handed over


def dsf_model(ch: Chapter):
    """Chapter 3's closed-book fine-tune for this chapter's test facts (`common.dsf_model`)."""
    return common_dsf_model(ch.dsf_params, ch.kb, ch.facts)


# ---------------------------------------------------------------------------------------------
# Every approach on the same questions


@dataclass
class MainTable:
    """The main table's readers at top-k = rag_top_k (six; five where the profile leaves F4, and the
    reader without the chain of thought, to others), and what later sections reuse of them."""

    table: pd.DataFrame  # one row per reader (TABLE_COLUMNS)
    dsf_source: str  # the visible line that says where the DSF model came from
    raft: object  # the main RAFT variant's TrainResult: its merged model reads in the ablations and curves
    fitness: RaftFitness  # the main RAFT model's, on the development questions
    scored: dict  # outcome name -> Scored (candidate log-likelihoods on every test item)
    gens: dict  # outcome name -> Generation of a quoting reader, on every test item
    labels: dict = field(default_factory=dict)  # MAIN key -> its row's label in `table`, in run order
    measured: Measured = field(default_factory=Measured)  # every reader's outcomes; RAFT's adapter, handed over
    seed_fitness: dict = field(default_factory=dict)  # a seeded draw's: MAIN key of a RAFT -> its fitness per seed
    seed_training: dict = field(default_factory=dict)  # and its training metrics per seed (examples, tokens)

    @property
    def fitness_per_seed(self) -> dict:
        """Each RAFT's fitness per training seed: a seeded draw's, else the one RAFT's."""
        return self.seed_fitness or {"raft_rag": [self.fitness]}

    def row(self, key: str) -> pd.Series:
        """A reader's row, found by its MAIN key (its label carries the run's top-k)."""
        return self.table.loc[self.labels[key]]


def main_table(ch: Chapter, reader) -> MainTable:
    """The rows at top-k = rag_top_k (`MainTable`): candidate log-likelihood on every test item (accuracy,
    refusal AUROC and recall) and generated answers on the subset (`Chapter.generated`), each
    recorded per question; prints where the DSF model came from. `reader`: the RAFT reader the
    notebook trained with the recipe (raft.train_reader on setup's records); its fitness on the
    development questions (raft_fitness, the plan's `raft` rule) is measured before it is asked."""
    k, rows, clock, sub = ch.k, [], ch.clock, ch.generated
    scored, gens, labels, measured = {}, {}, {}, Measured()

    def add(key, label, model_lm, style, k_read, quoting=False, **extra):
        name, labels[key] = MAIN[key], label
        sc, full = read(ch, measured, model_lm, style, k_read, name)
        scored[name] = sc
        if full is not None:  # a quoting reader: its replies to every item, the subset's for the format view
            gens[name] = full
            extra["marker_rate"] = marker_rate(full)
        gen = full.subset(sub) if full is not None else ask(ch, model_lm, style, k_read, name + GENERATED, sub)
        rows.append({**score(ch, measured, label, name + GENERATED, gen, sub, quoting=quoting, **extra), **sc.row()})

    with clock.stage("table"):
        add("base_closed", "base, closed book", ch.lm, "closed", 0)
        add("base_rag", f"base + RAG (top-{k})", ch.lm, "rag", k)
        dsf_lm, dsf_source = dsf_model(ch)
        print(dsf_source)
        add("dsf", "DSF, closed book", dsf_lm, "closed", 0)
        add("dsf_rag", f"DSF + RAG (top-{k})", dsf_lm, "rag", k)
        del dsf_lm
        release_memory()
        main = reader
        measured.update(handover.give_raft(main.ref()))  # the freshness chapter reads it
    with clock.stage("raft_fitness"):
        fitness = raft_fitness(ch, main.lm)
    with clock.stage("table"):
        add("raft_rag", f"RAFT + RAG (top-{k})", main.lm, "raft", k, quoting=True, train_s=main.metrics["train_s"])
        if not not_here(ch.params, NOCOT_COMPARISONS):  # F4's other arm: a RAFT training of its own
            nocot = fit(ch, raft_data(ch, cot=False), "raft-kb-nocot")
            # it answers without quoting: a quote-correct rate would be 0 by construction, so it has none
            add("raft_nocot_rag", f"RAFT without CoT + RAG (top-{k})", nocot.lm, "raft-nocot", k,
                train_s=nocot.metrics["train_s"])
            del nocot
        release_memory()
    return MainTable(pd.DataFrame(rows).set_index("condition"), dsf_source, main, fitness, scored, gens, labels,
                     measured)


def seeded_main_table(ch: Chapter, readers: dict) -> MainTable:
    """main_table on a seeded draw (the plan's `seeds`): every trained reader once per training seed,
    each seed's outcomes "<condition> (seed k)" and their mean "<condition>", its row the seeds' mean:
    chapter 3's gold-questions fine-tune and the reader's fine-tune (chapter 3's hand-over of every
    seed), alone and with RAG; `readers` {"raft_rag": gold RAFT per seed, "reader_raft_rag": the reader's
    RAFT per seed}, each seed's fitness on the development questions measured before it is asked. The
    scored, generated and handed-over RAFT of the later sections is the first seed's."""
    k, rows, clock, sub = ch.k, [], ch.clock, ch.generated
    scored, gens, labels, measured = {}, {}, {}, Measured()

    def add(key, label, models, style, k_read, quoting=False, **extra):
        name, labels[key], per_seed, outs = MAIN[key], label, [], []
        for s, model_lm in enumerate(models, 1):
            tag, out = (seed_tag(s) if len(models) > 1 else ""), Measured()
            sc, full = read(ch, out, model_lm, style, k_read, name + tag)
            more = {**extra, **({"marker_rate": marker_rate(full)} if full is not None else {})}
            gen = full.subset(sub) if full is not None else ask(ch, model_lm, style, k_read, name + tag + GENERATED, sub)
            per_seed.append({**score(ch, out, label, name + tag + GENERATED, gen, sub, quoting=quoting, **more), **sc.row()})
            outs.append(out)
            if s == 1:
                scored[name] = sc
                gens.update({name: full} if full is not None else {})
        if len(models) == 1:
            measured.update(outs[0])
        else:
            measured.update(merge_seeds(outs))
        rows.append({c: (sum(r[c] for r in per_seed) / len(per_seed) if isinstance(per_seed[0][c], (int, float)) else per_seed[0][c])
                     for c in per_seed[0]})

    handed = handover.seeded_dsf(ch.dsf_params.model, [q.qid for q in ch.facts])
    if handed.why:
        raise ValueError(f"chapter 4 on a seeded draw reads chapter 3's fine-tune of every seed from this run folder, "
                         f"but {handed.why}: run chapter 3 first (it reads its committed units)")
    dsf_source = (f"DSF models: chapter 3's chosen checkpoints of its {len(handed.gold)} training seeds from this run "
                  f"(the gold questions, and the reader's arm: {handed.reader_arm or 'none'}), read, not retrained.")
    print(dsf_source)
    with clock.stage("table"):
        add("base_closed", "base, closed book", [ch.lm], "closed", 0)
        add("base_rag", f"base + RAG (top-{k})", [ch.lm], "rag", k)
        gold = [units.model(ref) for ref in handed.gold]
        add("dsf", "DSF, closed book", gold, "closed", 0)
        add("dsf_rag", f"DSF + RAG (top-{k})", gold, "rag", k)
        if handed.reader:
            mine = [units.model(ref) for ref in handed.reader]
            add("reader_dsf", "DSF from documents, closed book", mine, "closed", 0)
            add("reader_dsf_rag", f"DSF from documents + RAG (top-{k})", mine, "rag", k)
        del gold
        release_memory()
        measured.update(handover.give_raft(readers["raft_rag"][0].ref()))  # the freshness chapter reads its first seed
    with clock.stage("raft_fitness"):
        fitness = {key: [raft_fitness(ch, r.lm) for r in found] for key, found in readers.items()}
    with clock.stage("table"):
        add("raft_rag", f"RAFT + RAG (top-{k})", [r.lm for r in readers["raft_rag"]], "raft", k, quoting=True,
            train_s=readers["raft_rag"][0].metrics["train_s"])
        if readers.get("reader_raft_rag"):
            add("reader_raft_rag", f"RAFT from documents + RAG (top-{k})", [r.lm for r in readers["reader_raft_rag"]], "raft", k,
                quoting=True, train_s=readers["reader_raft_rag"][0].metrics["train_s"])
        if not not_here(ch.params, NOCOT_COMPARISONS):  # F4's other arm: the first seed only (the plan's seeds)
            nocot = fit(ch, raft_data(ch, cot=False), "raft-kb-nocot")
            add("raft_nocot_rag", f"RAFT without CoT + RAG (top-{k})", [nocot.lm], "raft-nocot", k, train_s=nocot.metrics["train_s"])
            del nocot
        release_memory()
    return MainTable(pd.DataFrame(rows).set_index("condition"), dsf_source, readers["raft_rag"][0], fitness["raft_rag"][0],
                     scored, gens, labels, measured, seed_fitness=fitness,
                     seed_training={key: [r.metrics for r in found] for key, found in readers.items()})


TABLE_COLUMNS = ["n", "acc", "acc_lo", "acc_hi", "chance", "refusal_auroc", "refusal_recall", "contains", "em", "f1",
                 "refusal_acc", "quote_correct", "marker_rate", "prompt_tokens", "completion_tokens", "cost_per_1k_usd",
                 "train_s"]


def table_style(table: pd.DataFrame):
    """The main table: candidate accuracy with its 95 % Wilson interval and chance, refusal as a
    detector, then the generated answers' format view."""
    pct = {c: "{:.0%}" for c in ("acc", "acc_lo", "acc_hi", "chance", "refusal_recall", "contains", "em", "refusal_acc",
                                 "quote_correct", "marker_rate")}
    cols = [c for c in TABLE_COLUMNS if c in table]
    return table[cols].style.format({**pct, "refusal_auroc": "{:.2f}", "f1": "{:.2f}", "prompt_tokens": "{:.0f}",
                                     "completion_tokens": "{:.1f}", "cost_per_1k_usd": "${:.3f}", "train_s": "{:.0f} s",
                                     "n": "{:.0f}"}, na_rep="-")


def paper_table() -> pd.DataFrame:
    """The RAFT paper's Table 1 rows (LLaMA2-7B), for the ranking of this chapter's rows."""
    return pd.DataFrame(raft.PAPER_TABLE1, index=["PubMedQA acc. (%)", "HotpotQA (%)"]).T.rename_axis("paper row (LLaMA2-7B)")


# ---------------------------------------------------------------------------------------------
# Ablations: how much oracle, how many distractors


def p_outcome(p: float) -> str:
    return f"RAFT P={p:g}"


def d_outcome(d: int) -> str:
    return f"RAFT {d} distractors"


@dataclass
class Ablations:
    """RAFT trained at every P and every distractor count (F2, F5), or why this profile does not."""

    p_table: pd.DataFrame  # one row per P (p_values)
    d_table: pd.DataFrame  # one row per training distractor count (distractor_counts)
    fits: dict = field(default_factory=dict)  # distractor count -> TrainResult (the main variant's at its own)
    scored: dict = field(default_factory=dict)  # outcome name -> Scored, on `Chapter.ablation_facts`
    gens: dict = field(default_factory=dict)  # outcome name -> Generation, on the same facts
    why: str = ""  # where the profile leaves them (`not_here`), "" when it runs them
    measured: Measured = field(default_factory=Measured)  # every variant's outcomes

    @property
    def empty(self) -> bool:
        return self.p_table.empty


def ablations(ch: Chapter, main: MainTable) -> Ablations:
    """RAFT trained at every P of p_values and every count of distractor_counts, asked the fact
    questions at the main table's top-k (generated, then scored after its reasoning); the main
    variant's replies and scores (`main`) are reused, not recomputed. Empty tables where the profile
    does not run them (`not_here`)."""
    p, k, idx = ch.params, ch.k, ch.ablation_facts
    why = not_here(p, ABLATION_COMPARISONS)
    if why:
        print(f"The ablations are not run in the {p.profile} profile: {why}.")
        return Ablations(pd.DataFrame(), pd.DataFrame(), why=why)
    main_name = MAIN["raft_rag"]
    p_rows, d_rows, fits, scored, gens, measured = [], [], {}, {}, {}, Measured()

    def variant(outcome, model_lm):
        if model_lm is None:  # the main variant, on the ablations' facts
            sc, gen = main.scored[main_name].only(ch.ablation_qids), main.gens[main_name].subset(idx)
            measured.record(outcome, sc.outcomes)
        else:
            sc, gen = read(ch, measured, model_lm, "raft", k, outcome, idx)
        scored[outcome], gens[outcome] = sc, gen
        return sc, gen

    with ch.clock.stage("ablations"):
        for share in p.p_values:
            result = None if share == p.p_oracle else fit(ch, raft_data(ch, p=share), f"raft-kb-p{share:g}")
            sc, gen = variant(p_outcome(share), result.lm if result else None)
            p_rows.append({**score(ch, measured, f"P = {share:g}", p_outcome(share) + GENERATED, gen, idx, quoting=True,
                                   p_oracle=share, marker_rate=marker_rate(gen)), **sc.row()})
            del result
            release_memory()
        for d in p.distractor_counts:
            fits[d] = main.raft if d == p.n_distractors else fit(ch, raft_data(ch, k=d), f"raft-kb-d{d}")
            sc, gen = variant(d_outcome(d), None if d == p.n_distractors else fits[d].lm)
            d_rows.append({**score(ch, measured, f"{d} distractors", d_outcome(d) + GENERATED, gen, idx, quoting=True,
                                   n_distractors=d, marker_rate=marker_rate(gen)), **sc.row()})
    return Ablations(pd.DataFrame(p_rows).set_index("condition"), pd.DataFrame(d_rows).set_index("condition"),
                     fits, scored, gens, measured=measured)


def best_p(p_table: pd.DataFrame) -> float:
    """The P with the most gold answers ranked first; ties go to the larger P (an argmax over near
    ties: the F2 comparison, not this choice, carries the finding)."""
    return float(p_table.sort_values(["acc", "p_oracle"], ascending=[False, False]).p_oracle.iloc[0])


def ablation_style(abl: Ablations):
    if abl.empty:
        return None  # `ablations` printed why
    cols = ["n", "acc", "acc_lo", "acc_hi", "contains", "quote_correct", "marker_rate", "prompt_tokens"]
    return pd.concat([abl.p_table, abl.d_table])[cols].style.format(
        {"n": "{:.0f}", "prompt_tokens": "{:.0f}"} | {c: "{:.0%}" for c in cols[1:-1]})


# ---------------------------------------------------------------------------------------------
# Test-time documents: top-k curves


def topk_outcome(reader: str, k: int) -> str:
    return f"{reader}, top-{k}"


@dataclass
class Curves:
    """Each reader's share of gold answers ranked first at every test-time top-k (F5, F6), or why this
    profile does not measure them."""

    curve: pd.DataFrame  # top-k x reader: gold ranked first
    contains: pd.DataFrame  # top-k x reader: generated answers that contain the gold
    tokens: dict = field(default_factory=dict)  # (reader, top-k) -> mean prompt tokens
    why: str = ""  # where the profile leaves them (`not_here`), "" when it runs them
    measured: Measured = field(default_factory=Measured)  # every reader's outcomes at every top-k

    @property
    def empty(self) -> bool:
        return self.curve.empty


def top_k_curves(ch: Chapter, main: MainTable, abl: Ablations) -> Curves:
    """Gold ranked first at every test-time top-k for the base reader and RAFT, and at the main
    table's and the largest top-k for the fewest-distractor RAFT (when trained), on `ablation_facts` only (the unanswerable ones would add prefill and
    no point); generated answers beside them (the RAFT readers' on the same questions, the base
    reader's on the generated subset). What the main table or the ablations measured is reused."""
    p, k, idx, sub = ch.params, ch.k, ch.ablation_facts, ch.generated_facts
    why = not_here(p, TOPK_COMPARISONS)
    if why:
        print(f"The top-k curves are not run in the {p.profile} profile: {why}.")
        return Curves(pd.DataFrame(), pd.DataFrame(), why=why)
    readers = {BASE_READER: (ch.lm, "rag", MAIN["base_rag"]), ch.raft_reader: (main.raft.lm, "raft", MAIN["raft_rag"])}
    if ch.least_distractors != p.n_distractors:
        readers[ch.least_reader] = (abl.fits[ch.least_distractors].lm, "raft", d_outcome(ch.least_distractors))
    scored, gens = {**main.scored, **abl.scored}, {**main.gens, **abl.gens}
    curves, contains, tokens, measured = {}, {}, {}, Measured()
    with ch.clock.stage("top_k"):
        for name, (model_lm, style, at_k) in readers.items():
            # the fewest-distractor reader only where a claim reads it (F5 at the largest top-k)
            for kk in p.top_ks if name != ch.least_reader else sorted({k, max(p.top_ks)}):
                outcome = topk_outcome(name, kk)
                if kk == k:  # measured already: the same scores, on the curves' facts, under the curve's name
                    sc = scored[at_k].only(ch.ablation_qids)
                    measured.record(outcome, sc.outcomes)
                else:
                    sc, gen = read(ch, measured, model_lm, style, kk, outcome, idx)
                if style != "raft":  # the base reader in words, on the generated subset
                    said = (main.table.loc[f"base + RAG (top-{k})", "contains"] if kk == k else
                            score(ch, measured, name, outcome + GENERATED, ask(ch, model_lm, style, kk, outcome, sub),
                                  sub)["contains"])
                else:  # a quoting reader's replies on the fact questions, generated for its scoring
                    if kk == k:
                        gen = gens[at_k].subset(idx) if at_k == MAIN["raft_rag"] else gens[at_k]
                    said = score(ch, measured, name, outcome + GENERATED, gen, idx)["contains"]
                contains.setdefault(name, {})[kk] = said
                curves.setdefault(name, {})[kk] = sc.acc
                tokens[name, kk] = sc.prompt_tokens
    return Curves(pd.DataFrame(curves).rename_axis("top-k"), pd.DataFrame(contains).rename_axis("top-k"), tokens,
                  measured=measured)


def base_best_k(curve: pd.DataFrame) -> int:
    """The top-k at which the base reader scores highest (the smallest such k)."""
    return int(curve[BASE_READER].idxmax())


# ---------------------------------------------------------------------------------------------
# Real benchmarks: PubMedQA and HotpotQA


def pubmedqa_question(question: str) -> str:
    """A PubMedQA question with its labels named, as every reader (and RAFT's training) sees it."""
    return f"{question} Answer {', '.join(PUBMEDQA_LABELS[:-1])} or {PUBMEDQA_LABELS[-1]}."


def f1_outcomes(items: list, texts: list[str]) -> dict[str, float]:
    """HotpotQA per item: the official script's F1 (`metrics.hotpotqa_f1`: its yes/no/noanswer rule,
    then token F1) of the reply's short answer against the gold answers (continuous)."""
    if len(items) != len(texts):
        raise ValueError(f"{len(items)} items but {len(texts)} replies: they must pair up in order")
    return {it.qid: metrics.hotpotqa_f1(metrics.short_answer(a), it.answers) for it, a in zip(items, texts)}


def _tokens(items: list, gen: Generation) -> dict:
    return {it.qid: (gen.prompt_tokens[i], gen.completion_tokens[i]) for i, it in enumerate(items)}


def _pick(ch: Chapter, items: list, split: str, n: int) -> list:
    """n items of a split, drawn with the chapter's seed, in file order."""
    rng = np.random.default_rng(ch.params.seed)
    return [items[i] for i in sorted(rng.permutation([j for j, it in enumerate(items) if it.split == split])[:n])]


def _bench_store(ch: Chapter, name: str, items: list, size: int):
    path = ch.folder / "chroma" / f"{CHAPTER}-{name}"
    shutil.rmtree(path, ignore_errors=True)
    store = rag.ChunkStore(name, path=path, embed_model=ch.embed_model, chunk_size=size, chunk_overlap=0)
    store.ingest([rag.Source(p.pid, p.title, p.text, kind=name) for it in items for p in it.passages])
    return rag.Retriever(store, ch.embed_model)


def _bench_readers(ch: Chapter, name: str, train_items: list, sources: list, pool: list, negatives) -> list:
    """(row name, model, prompt style): the base model, optionally DSF, and RAFT trained on the train split."""
    p = ch.params
    readers = [("base, closed book", ch.lm, "closed"), ("base + RAG", ch.lm, "rag")]
    if p.bench_dsf:
        examples = [example(tasks.dsf_messages(it.question), it.answers[0]) for it in train_items]
        dsf_lm = units.train(p.model, examples, tasks.lora_config(p, p.epochs), label=f"dsf-{name}").merge().lm
        readers += [("DSF, closed book", dsf_lm, "closed"), ("DSF + RAG", dsf_lm, "rag")]
    records = raft.build_raft(sources, pool, p.bench_distractors, p.p_oracle, p.seed, hard_negatives=negatives)
    raft.save_jsonl(records, ch.folder / "raft" / f"{name}_train.jsonl")
    return readers + [("RAFT + RAG", fit(ch, records, f"raft-{name}").lm, "raft")]


def _bench_limit(ch: Chapter, style: str) -> int:
    return ch.params.bench_max_new_tokens if style == "raft" else ch.params.max_new_tokens


@dataclass
class Benchmarks:
    """The benchmark rows (PubMedQA, HotpotQA), and a note for each benchmark this run left out."""

    rows: list = field(default_factory=list)  # one dict per benchmark and reader
    notes: list = field(default_factory=list)
    pubmedqa_gold: list = field(default_factory=list)  # the test labels, for macro-F1's drift tolerance
    hotpotqa_available: int = 0  # HotpotQA test questions the data folder holds after the train split
    measured: Measured = field(default_factory=Measured)  # every reader's outcomes, per benchmark item

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def value(self, benchmark: str, condition: str, column: str) -> float:
        return next((r[column] for r in self.rows if r["benchmark"] == benchmark and r["condition"] == condition),
                    float("nan"))


def pubmedqa(ch: Chapter) -> Benchmarks:
    """PubMedQA rows: each reader's label of highest log-likelihood among yes / no / maybe, after a
    question that names them (RAFT: after its own generated quote and the final-answer marker);
    accuracy and macro-F1 beside the majority label, each reader recorded per item as
    "PubMedQA <reader>"; a note instead when the data is not there."""
    from dataclasses import replace

    p = ch.params
    why = not_here(p, PUBMEDQA_COMPARISONS)
    if why:
        return Benchmarks(notes=[f"PubMedQA is not run in the {p.profile} profile: {why}"])
    try:
        pub = raft.one_document(benchmarks.load_pubmedqa(p.data_dir or None))
    except benchmarks.DataUnavailable as e:
        return Benchmarks(notes=[f"PubMedQA is not in this run: {e}"])
    pub = [replace(it, question=pubmedqa_question(it.question)) for it in pub]
    test, train_items = _pick(ch, pub, "test", p.pubmedqa_test), _pick(ch, pub, "train", p.bench_train)
    gold = [it.answers[0] for it in test]
    out = Benchmarks(pubmedqa_gold=gold)
    majority = pd.Series([it.answers[0] for it in pub if it.split == "train"]).mode()[0]
    retriever = _bench_store(ch, "pubmedqa", test + train_items, p.pubmedqa_chunk_size)
    docs = [[h.text for h in hits] for hits in retriever.dense([it.question for it in test], p.pubmedqa_top_k)]
    train_chunks = retriever.store.all_chunks(where={"doc_id": {"$in": [it.passages[0].pid for it in train_items]}})
    out.measured.record("PubMedQA majority class", {it.qid: float(majority == it.answers[0]) for it in test})
    out.rows.append({"benchmark": "PubMedQA", "condition": "majority class", "n": len(gold),
                     **raft.label_scores([majority] * len(gold), gold)})
    readers = _bench_readers(ch, "pubmedqa", train_items, raft.chunk_sources(train_items, train_chunks),
                             [c.text for c in train_chunks], None)
    questions, labels = [it.question for it in test], [list(PUBMEDQA_LABELS)] * len(test)
    gold_idx = [PUBMEDQA_LABELS.index(g) for g in gold]
    for name, model_lm, style in readers:
        read_docs = docs if style != "closed" else None
        gen, r = raft.read(model_lm, questions, read_docs, style, labels, gold_idx, p.bench_max_new_tokens,
                           p.batch_size, f"PubMedQA {name}")
        out.measured.record(f"PubMedQA {name}", r.outcomes([it.qid for it in test]))
        out.rows.append({"benchmark": "PubMedQA", "condition": name, "n": len(gold),
                         **raft.label_scores(raft.predicted_labels(r, PUBMEDQA_LABELS), gold),
                         "chance": r.chance, "prompt_tokens": sum(r.prompt_tokens) / len(test),
                         **({"marker_rate": marker_rate(gen)} if gen else {})})
    del readers
    release_memory()
    return out


def hotpotqa(ch: Chapter) -> Benchmarks:
    """HotpotQA rows (answer EM and F1, with a bootstrap interval on F1), each reader recorded per
    item as "HotpotQA <reader>" (F1); a note instead when the data is not there."""
    p = ch.params
    why = not_here(p, HOTPOTQA_COMPARISONS)
    if why:
        return Benchmarks(notes=[f"HotpotQA is not run in the {p.profile} profile: {why}"])
    try:
        hot = benchmarks.load_hotpotqa(p.data_dir or None)
    except benchmarks.DataUnavailable as e:
        return Benchmarks(notes=[f"HotpotQA is not in this run: {e}"])
    test, train_items = _pick(ch, hot, "test", p.bench_test), _pick(ch, hot, "train", p.bench_train)
    out = Benchmarks(hotpotqa_available=sum(it.split == "test" for it in hot))
    # a paragraph is one chunk as far as the embedder reads whole (a longer one is split, never cut);
    # search filters to the question's ten
    retriever = _bench_store(ch, "hotpotqa", test, max_chunk_tokens(ch.params.embedder))
    vectors = retriever.embed([it.question for it in test])
    docs = [[h.text for h in retriever.dense([it.question], p.hotpotqa_top_k, vectors=vectors[i:i + 1],
                                             where={"doc_id": {"$in": [q.pid for q in it.passages]}})[0]]
            for i, it in enumerate(test)]
    oracles = [[q.text for q in it.passages if q.pid in it.gold_pids] for it in test]
    readers = _bench_readers(ch, "hotpotqa", train_items, raft.benchmark_sources(train_items, p.hotpotqa_quotes or None),
                             [q.text for it in hot if it.split == "train" for q in it.passages],
                             raft.own_distractors(train_items))
    for name, model_lm, style in readers:
        gen = raft.ask(model_lm, [it.question for it in test], docs if style != "closed" else None, style,
                       _bench_limit(ch, style), p.batch_size, f"HotpotQA {name}")
        r = raft.score_row(name, gen, test, oracles if style == "raft" else None, p.price_per_mtok)
        f1s = f1_outcomes(test, gen.texts)
        out.measured.record(f"HotpotQA {name}", f1s, tokens=_tokens(test, gen))
        out.rows.append({"benchmark": "HotpotQA", "condition": name, "n": len(test), "em": r["em"],
                         "f1": sum(f1s.values()) / len(f1s),  # the official script's F1, as the outcomes
                         "f1_ci": mean_interval(list(f1s.values())), "contains": r["contains"],
                         "quote_correct": r.get("quote_correct"),
                         "marker_rate": marker_rate(gen) if style == "raft" else None,
                         "prompt_tokens": gen.mean_prompt_tokens, "completion_tokens": gen.mean_completion_tokens})
    del readers
    release_memory()
    return out


def benchmark_rows(ch: Chapter) -> Benchmarks:
    """Both benchmarks, each timed as a stage; absent data leaves a note, not an error."""
    with ch.clock.stage("pubmedqa"):
        pub = pubmedqa(ch)
    with ch.clock.stage("hotpotqa"):
        hot = hotpotqa(ch)
    return Benchmarks(pub.rows + hot.rows, pub.notes + hot.notes, pub.pubmedqa_gold, hot.hotpotqa_available,
                      Measured.merged(pub.measured, hot.measured))


def benchmark_style(bench: Benchmarks):
    """The benchmark table with 95 % intervals (Wilson for accuracy, bootstrap for mean F1)."""
    show = bench.table
    if show.empty:
        return pd.DataFrame({"note": bench.notes})
    if "f1_ci" in show:
        show["f1_ci"] = show.f1_ci.map(lambda ci: f"{ci[0]:.2f}-{ci[1]:.2f}" if isinstance(ci, tuple) else "-")
    if "acc" in show:
        show["acc_ci"] = [f"{lo:.0%}-{hi:.0%}" if a == a else "-" for a, n in zip(show.acc, show.n)
                          for lo, hi in [wilson_interval(a * n, n) if a == a else (0, 0)]]
    pct = [c for c in ("acc", "chance", "em", "contains", "quote_correct", "marker_rate") if c in show]
    return show.set_index(["benchmark", "condition"]).style.format(
        {c: "{:.0%}" for c in pct} | {c: "{:.2f}" for c in ("macro_f1", "f1") if c in show}
        | {c: "{:.0f}" for c in ("prompt_tokens", "completion_tokens") if c in show}, na_rep="-")


# ---------------------------------------------------------------------------------------------
# Headline metrics


@dataclass
class Findings:
    """What the chapter's sections returned, in run order: the metrics, comparisons, sentences and
    results file read these and the set-up on `Chapter`, nothing else."""

    main: MainTable
    ablations: Ablations
    curves: Curves
    bench: Benchmarks

    @property
    def measured(self) -> Measured:
        """Every section's outcomes (and RAFT's hand-over), in run order."""
        return Measured.merged(self.main.measured, self.ablations.measured, self.curves.measured, self.bench.measured)


def macro_f1_tol(gold: list[str], labels: tuple[str, ...] = PUBMEDQA_LABELS) -> float:
    """How far macro-F1 over `labels` can move when as many answers flip as the drift rule allows a
    rate over the same items. A label's F1 is 2 tp / (predicted + gold) and 0 without a true
    positive; one flipped answer changes the predicted count of at most two labels by one (and their
    tp by at most one), which moves each such label's F1 by at most 2 / (its gold count), and a label
    no item holds not at all. So each flip moves the mean over labels by at most
    4 / (len(labels) x the smallest non-zero gold count); the bound adds up over flips, capped at 1."""
    counts = [sum(g == lab for g in gold) for lab in labels]
    present = [c for c in counts if c > 0]
    if not present:
        return 0.0
    flips = round(rate_tolerance(len(gold)) * len(gold))
    return min(1.0, flips * 4 / (len(labels) * min(present)))


def _curve_metrics(ch: Chapter, curves: Curves, put, n_gen: int, n_ablation: int) -> None:
    """The top-k curves' metrics (headline_metrics, where the profile runs the curves)."""
    curve = curves.curve
    keys = {BASE_READER: "base_rag", ch.raft_reader: "raft_rag", ch.least_reader: f"raft_d{ch.least_distractors}_rag"}
    for name in curve:
        for kk, v in curve[name].dropna().items():
            put(f"{keys[name]}_top{kk}_acc", v, "rate", n=n_ablation)
            put(f"{keys[name]}_top{kk}_contains", curves.contains[name][kk], "rate",
                n=n_gen if name == BASE_READER else n_ablation)
    spread_tol = 2 * rate_tolerance(n_ablation)  # max - min: each end may move by a rate's tolerance
    spread = lambda c: c.max() - c.min()  # noqa: E731
    put("raft_topk_spread", spread(curve[ch.raft_reader]), "derived", tol=spread_tol)
    put("base_topk_spread", spread(curve[BASE_READER]), "derived", tol=spread_tol)
    if ch.least_reader in curve:
        put(f"raft_d{ch.least_distractors}_topk_spread", spread(curve[ch.least_reader]), "derived", tol=spread_tol)
    enough = [kk for kk in curve.index if curve[ch.raft_reader][kk] >= curve[BASE_READER].max()]
    if enough:  # the fewest chunks at which RAFT reaches the base reader's best: an argmin over near ties
        put("raft_k_for_base_best", int(min(enough)), "choice")
    put("topk_n", n_ablation, "exact")


def headline_metrics(ch: Chapter, f: Findings) -> Measured:
    """The chapter's headline metrics, each declared with its kind on the results file. `<key>_acc`
    is candidate accuracy on every test fact (`<key>_n` of them); `<key>_contains`, `_em`, `_f1` and
    `_refusal_acc` are the generated answers on the subset (`generated_n` facts,
    `generated_unanswerable_n` unanswerable questions)."""
    n_facts, n_unanswerable, n_ablation = len(ch.facts), len(ch.test_items) - len(ch.facts), len(ch.ablation_facts)
    sub = ch.generated
    n_gen = len(ch.generated_facts)
    n_gen_unanswerable = len(sub) - n_gen
    m = Measured()
    put = m.metric

    def refusal(key, r):
        if pd.notna(r.refusal_auroc):
            put(f"{key}_refusal_auroc", r.refusal_auroc, "derived", tol=rate_tolerance(min(n_unanswerable, n_facts)))
            put(f"{key}_refusal_recall_at_5pct_fpr", r.refusal_recall, "rate", n=n_unanswerable)

    for key in f.main.labels:  # the readers this run asked, in run order
        r = f.main.row(key)
        put(f"{key}_acc", r.acc, "rate", n=n_facts)
        put(f"{key}_n", n_facts, "exact")  # the questions behind the figure: a change of n is design, never drift
        put(f"{key}_chance", r.chance, "exact")
        refusal(key, r)
        put(f"{key}_contains", r.contains, "rate", n=n_gen)
        put(f"{key}_f1", r.f1, "mean", n=n_gen)
        put(f"{key}_em", r.em, "rate", n=n_gen)
        put(f"{key}_prompt_tokens", r.prompt_tokens, "exact")
        if pd.notna(r.refusal_acc):
            put(f"{key}_refusal_acc", r.refusal_acc, "rate", n=n_gen_unanswerable)
    put("raft_quote_correct", f.main.row("raft_rag").quote_correct, "rate", n=n_gen)
    put("raft_marker_rate", f.main.row("raft_rag").marker_rate, "rate", n=len(ch.test_items))
    put("n_test_facts", n_facts, "exact")
    put("n_unanswerable", n_unanswerable, "exact")
    put("n_train", len(ch.train_sources), "exact")
    dev = f.main.fitness
    put("raft_dev_fitness", int(dev.met), "choice")  # the plan's `raft` rule: 1 met, 0 missed
    put("raft_dev_quote_marker", dev.quote_marker, "rate", n=dev.n)
    put("raft_dev_acc", dev.acc, "rate", n=dev.n)
    put("raft_dev_base_acc", dev.base_acc, "rate", n=dev.n)
    put("raft_dev_n", dev.n, "exact")
    # a seeded draw: each seed's fitness ("<metric>_seed<k>", chapter 7's per-seed verdicts read it); the
    # arm's is every seed's (the plan's raft rule: the seed-mean comparison needs every seed fit)
    for key, metric in (("raft_rag", "raft_dev_fitness"), ("reader_raft_rag", "raft_reader_dev_fitness")):
        fits = f.main.seed_fitness.get(key) or []
        for s, fit_ in enumerate(fits, 1):
            put(f"{metric}_seed{s}", int(fit_.met), "choice")
            put(f"{metric.replace('_fitness', '')}_quote_seed{s}", fit_.quote, "rate", n=fit_.n)
            put(f"{metric.replace('_fitness', '')}_marker_seed{s}", fit_.marker, "rate", n=fit_.n)
            put(f"{metric.replace('_fitness', '')}_acc_seed{s}", fit_.acc, "rate", n=fit_.n)
        if fits and key == "reader_raft_rag":
            put(metric, int(all(x.met for x in fits)), "choice")
    if f.main.seed_fitness.get("raft_rag"):
        m.metrics["raft_dev_fitness"] = int(all(x.met for x in f.main.seed_fitness["raft_rag"]))
    put("raft_n_train", len(ch.train_sources), "exact")
    put("raft_epochs", ch.params.epochs, "exact")

    abl = f.ablations
    if not abl.empty:
        put("raft_best_p", best_p(abl.p_table), "choice")
        put("ablation_n", n_ablation, "exact")
    for _, r in abl.p_table.iterrows():
        put(f"raft_p{config.percent_tag(r.p_oracle)}_acc", r.acc, "rate", n=n_ablation)
        put(f"raft_p{config.percent_tag(r.p_oracle)}_contains", r.contains, "rate", n=n_ablation)
    for _, r in abl.d_table.iterrows():
        put(f"raft_d{r.n_distractors:.0f}_acc", r.acc, "rate", n=n_ablation)
        put(f"raft_d{r.n_distractors:.0f}_contains", r.contains, "rate", n=n_ablation)

    if not f.curves.empty:
        _curve_metrics(ch, f.curves, put, n_gen, n_ablation)

    bench = f.bench.table
    if len(bench):
        for b, c, col, key in BENCH_METRICS:
            hit = bench[(bench.benchmark == b) & (bench.condition == c)]
            if not len(hit) or col not in hit or pd.isna(hit[col].iloc[0]):
                continue
            n = int(hit.n.iloc[0])
            if col == "macro_f1":
                put(key, hit[col].iloc[0], "derived", tol=macro_f1_tol(f.bench.pubmedqa_gold))
            else:
                put(key, hit[col].iloc[0], "mean" if col == "f1" else "rate", n=n)
        for name, n in bench.groupby("benchmark").n.first().items():
            put(f"{name.lower()}_n_test", int(n), "exact")
        if f.bench.hotpotqa_available:
            put("hotpotqa_n_available", f.bench.hotpotqa_available, "exact")
    put("model_params_m", ch.lm.n_params() / 1e6, "exact")
    put("raft_train_s", f.main.raft.metrics["train_s"], "machine")
    put("raft_tokens_per_s", f.main.raft.metrics["tokens_per_s"], "machine")
    put("generated_n", n_gen, "exact")
    put("generated_unanswerable_n", n_gen_unanswerable, "exact")
    return m


# ---------------------------------------------------------------------------------------------
# Comparisons and sentences


def comparisons(ch: Chapter, f: Findings) -> dict[str, StatedComparison]:
    """Every comparison the analysis plan declares for this chapter (ragft.results.state_comparisons),
    with the run's choices for its placeholders, its reasons for the arms its parameters leave out, and
    its arms' labels, keyed by comparison id; `save` keeps them on the results file. Directions are the claims' own,
    whatever this run measured."""
    p, least = ch.params, ch.least_distractors
    low, top = min(p.top_ks), max(p.top_ks)
    base_k = base_best_k(f.curves.curve) if not f.curves.empty else None
    benchmarks = {r["benchmark"] for r in f.bench.rows if r["condition"] == MAIN["raft_rag"]}
    # a section this profile leaves to others: the sentence says where it runs (F5-topk-robust needs both)
    unmeasured = {cid: elsewhere_label(cid) for cid in
                  (ABLATION_COMPARISONS + ("F5-topk-robust",) if f.ablations.empty else ())
                  + (TOPK_COMPARISONS if f.curves.empty else ())}
    if not (1.0 in p.p_values and p.p_oracle != 1.0):
        unmeasured.setdefault("F2-best-p", f"p_values {p.p_values} has no P = 1 to set P = {p.p_oracle:g} against")
    if least >= p.n_distractors:
        for cid in ("F5-distractors", "F5-topk-robust"):
            unmeasured.setdefault(cid, f"distractor_counts {p.distractor_counts} trains no variant with fewer than {p.n_distractors}")
    for cid, bench in (("F3-hotpotqa", "HotpotQA"), ("F3-pubmedqa", "PubMedQA")):
        if bench not in benchmarks:
            unmeasured[cid] = elsewhere_label(cid) if not_here(p, (cid,)) else f"no {bench} data"
    choices = {"p": f"{p.p_oracle:g}", "more": p.n_distractors, "fewer": least, "k": top,
               # F6 ("a fine-tuned reader needs fewer chunks for the same quality") as one paired test: RAFT with
               # the fewest chunks tried against the base reader at the top-k where it scored highest. Picking the
               # base's best k on these same questions favours the base (its luck is kept), so a "supported"
               # verdict is conservative; "greater" rather than "equal" because RAFT ahead with fewer chunks is
               # the claim a fortiori, while an equivalence test would count RAFT far ahead against it.
               "F6-fewer-chunks": {"distractors": p.n_distractors, "fewer": low, "k": base_k}}
    labels = {
        "F3-raft-vs-base-rag": ("RAFT + RAG", "base + RAG"),
        "F3-raft-vs-dsf-rag": ("RAFT + RAG", "DSF + RAG"),
        "F4-cot": ("RAFT with the quote", "RAFT without it"),
        "F2-best-p": (f"P = {p.p_oracle:g}", "P = 1"),
        "F5-distractors": (f"{p.n_distractors} training distractors", f"{least} training distractors"),
        "F5-topk-robust": (f"at top-{top}, the reader trained with {p.n_distractors} distractors", f"the one trained with {least}"),
        "F6-fewer-chunks": (f"RAFT at top-{low}", f"the base model at top-{base_k}"),
        "K6-ladder": ("DSF + RAG", "DSF alone"),
        "K3-rag-vs-ft": ("base + RAG", "DSF alone"),
        "F3-hotpotqa": ("RAFT + RAG F1", "base + RAG F1", True),  # a mean F1, 0 to 1: in points
        "F3-pubmedqa": ("RAFT + RAG accuracy", "base + RAG accuracy"),
        # a seeded draw's: what a reader could build (the plan declares them from draw d2 on)
        "F3-reader-raft-vs-base-rag": ("RAFT from the rule's questions + RAG", "base + RAG"),
        "F3-reader-raft-vs-reader-rag": ("RAFT from the rule's questions + RAG", "the reader's fine-tune + RAG"),
        "K6-ladder-reader": ("the reader's fine-tune + RAG", "the reader's fine-tune alone"),
        "K3-rag-vs-reader": ("base + RAG", "the reader's fine-tune alone"),
    }
    declared = {cid for cid, spec in the_plan().comparisons.items() if spec.chapter == CHAPTER}
    labels = {cid: v for cid, v in labels.items() if cid in declared}
    if not f.main.seed_fitness.get("reader_raft_rag"):
        unmeasured.update({cid: "this run trains no reader's RAFT (a draw without the study)" for cid in
                           ("F3-reader-raft-vs-base-rag", "F3-reader-raft-vs-reader-rag") if cid in declared})
    return state_comparisons(CHAPTER, f.measured.outcomes, labels, choices, unmeasured, profile=p.profile)


def _ablation_sentences(ch: Chapter, f: Findings, m: dict) -> dict[str, str]:
    """F2's, F5's and F6's sentences (`sentences`), or where this run leaves them."""
    p, n_ablation = ch.params, len(ch.ablation_facts)
    curve, tokens = f.curves.curve, f.curves.tokens
    out = {}
    if f.ablations.empty:
        out["p_sentence"] = "No P value is trained in this run"
    else:
        chosen, ties = m["raft_best_p"], f.ablations.p_table.set_index("p_oracle").acc
        tied = [f"{x:g}" for x, v in ties.items() if x != chosen and v == ties[chosen]]
        out["p_sentence"] = (f"Of the P values trained ({', '.join(f'{x:g}' for x in p.p_values)}), P = {chosen:g} ranks the gold "
                             f"first most often ({ties[chosen]:.0%}" + (f", tied with P = {', '.join(tied)}; ties go to the larger P" if tied else "")
                             + f"). One test question is {1 / n_ablation:.1%} here")
    if f.curves.empty:
        out["f5_spread_sentence"] = out["f6_tokens_sentence"] = "The top-k curves are not measured in this run"
        return out
    lo, hi = min(p.top_ks), max(p.top_ks)
    spreads = [f"the reader trained with {p.n_distractors} distractors spans {100 * m['raft_topk_spread']:.0f} points"]
    least_key = f"raft_d{ch.least_distractors}_topk_spread"
    if least_key in m and ch.least_distractors != p.n_distractors:
        asked = curve[ch.least_reader].dropna().index
        where = "" if len(asked) == len(curve) else f" (asked at top-{' and top-'.join(map(str, asked))} only)"
        spreads.append(f"the one trained with {ch.least_distractors}{where} spans {100 * m[least_key]:.0f} points")
    spreads.append(f"the base reader spans {100 * m['base_topk_spread']:.0f} points")
    out["f5_spread_sentence"] = (f"Across top-k {lo} to {hi} (highest minus lowest share of gold answers ranked first), "
                                 + report.join_words(spreads))
    base_k = base_best_k(curve)
    out["f6_tokens_sentence"] = (f"RAFT at top-{lo} reads {tokens[ch.raft_reader, lo]:.0f} prompt tokens per "
                                 f"question; the base model at top-{base_k}, its highest-scoring top-k, reads "
                                 f"{tokens[BASE_READER, base_k]:.0f}"
                                 + (" (the same top-k: no chunks can be saved here)" if base_k == lo else ""))
    return out


def sentences(ch: Chapter, f: Findings, m: dict) -> dict[str, str]:
    """Descriptive sentences of measurements (no verdicts: those are the glued comparisons)."""
    p, n_ablation = ch.params, len(ch.ablation_facts)
    out = {"quote_sentence": f"{m['raft_quote_correct']:.0%} of RAFT's generated answers quote only text that is "
                             f"really in a document holding the answer, and {m['raft_marker_rate']:.0%} of its replies "
                             "reach the final-answer marker within the token budget"}
    out["ablation_scope"] = (f"the first {n_ablation} of the {m['n_test_facts']:.0f} fact questions" if n_ablation < m["n_test_facts"]
                             else f"all {n_ablation} fact questions")
    out["scoring_sentence"] = (f"Each of the {m['raft_rag_n']:.0f} test facts is asked with its gold value and "
                               f"{p.n_candidates} look-alike values of the same attribute, so guessing ranks the gold "
                               f"first {m['raft_rag_chance']:.0%} of the time; the generated answers (contains, EM, F1) are "
                               f"kept on the first {m['generated_n']:.0f} facts and {m['generated_unanswerable_n']:.0f} "
                               "unanswerable questions")
    aurocs = {name: r.refusal_auroc for name, r in f.main.table.iterrows() if pd.notna(r.refusal_auroc)}
    if not aurocs:
        out["refusal_sentence"] = "This run asked no unanswerable question"
    else:
        out["refusal_sentence"] = (
            f"As refusal detectors (the refusal reply's log-likelihood minus the best value's, on "
            f"{m['n_unanswerable']:.0f} unanswerable against {m['n_test_facts']:.0f} answerable questions), the readers "
            "reach AUROC " + ", ".join(f"{v:.2f} ({name})" for name, v in aurocs.items())
            + f" (0.5 is no signal); at <= 5 % false refusals RAFT + RAG refuses "
            f"{m.get('raft_rag_refusal_recall_at_5pct_fpr', float('nan')):.0%} of the unanswerable questions and the base "
            f"model with RAG {m.get('base_rag_refusal_recall_at_5pct_fpr', float('nan')):.0%}. RAFT's recipe trains on "
            "answerable questions only")
    out |= _ablation_sentences(ch, f, m)
    if "pubmedqa_raft_acc" in m:
        out["pubmedqa_sentence"] = (
            f"On {m['pubmedqa_n_test']:.0f} PubMedQA test questions, scored by the label of highest log-likelihood "
            f"(chance 33 %), RAFT + RAG picks the right label for {m['pubmedqa_raft_acc']:.0%} (macro-F1 "
            f"{m['pubmedqa_raft_macro_f1']:.2f}), the base model reading the same abstract chunks "
            f"{m['pubmedqa_base_rag_acc']:.0%} (macro-F1 {m['pubmedqa_base_rag_macro_f1']:.2f}) and closed book "
            f"{m['pubmedqa_base_closed_acc']:.0%}; always answering the majority label scores "
            f"{m['pubmedqa_majority_acc']:.0%} (macro-F1 {f.bench.value('PubMedQA', 'majority class', 'macro_f1'):.2f}). "
            f"{m.get('pubmedqa_raft_marker_rate', float('nan')):.0%} of RAFT's quotes reach the final-answer marker "
            f"within {p.bench_max_new_tokens} tokens")
    elif not_here(p, PUBMEDQA_COMPARISONS):
        out["pubmedqa_sentence"] = "PubMedQA is not run in this profile"
    else:
        out["pubmedqa_sentence"] = "PubMedQA was not in this run (no data folder), so its rows are absent"
    if "hotpotqa_raft_f1" in m:
        out["hotpotqa_sentence"] = (
            f"On {m['hotpotqa_n_test']:.0f} HotpotQA test questions (of the {m.get('hotpotqa_n_available', 0):.0f} the data "
            f"folder holds after the train split), with targets quoting {p.hotpotqa_quotes or 'every'} gold sentence"
            f"{'s' if p.hotpotqa_quotes != 1 else ''} and {p.bench_max_new_tokens} tokens to answer in, "
            f"{m['hotpotqa_raft_marker_rate']:.0%} of RAFT's replies reach the final-answer marker; RAFT + RAG reaches "
            f"answer F1 {m['hotpotqa_raft_f1']:.2f} (EM {m['hotpotqa_raft_em']:.0%}, gold contained "
            f"{m['hotpotqa_raft_contains']:.0%}) and the base model reading the same paragraphs F1 "
            f"{m['hotpotqa_base_rag_f1']:.2f} (EM {m['hotpotqa_base_rag_em']:.0%}, contained {m['hotpotqa_base_rag_contains']:.0%})")
    elif not_here(p, HOTPOTQA_COMPARISONS):
        out["hotpotqa_sentence"] = "HotpotQA is not run in this profile"
    else:
        out["hotpotqa_sentence"] = "HotpotQA was not in this run (no data folder), so its rows are absent"
    return out


def glue_findings(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> None:
    """Everything the prose cites: the headline metrics, the comparison sentences, a few labels."""
    prose.glue_findings(headline.metrics, comparisons.values(), sentences(ch, f, headline))
    glue("size_ratio", raft.PAPER_MODEL_PARAMS / ch.lm.n_params())
    glue("max_false_refusals", f"{MAX_FALSE_REFUSALS:.0%}")
    glue("dsf_source", f.main.dsf_source)
    rule = the_plan().fitness["raft"]
    glue("raft_fit_quote", rule["quote_min"])
    glue("raft_fit_marker", rule["marker_min"])
    fits = f.main.fitness_per_seed
    for key, label in (("raft_rag", "raft_fitness_label"), ("reader_raft_rag", "reader_raft_fitness_label")):
        seeds = fits.get(key) or []
        glue(label, f"{sum(x.met for x in seeds)} of {len(seeds)}" if seeds else "not trained")
    glue("facts_source", ch.facts_source)


def save(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> Path:
    """The chapter's one recording step: every section's outcomes, RAFT's hand-over, the headline
    metrics, the judged comparisons and the tables, written to the results file."""
    records = lambda table: table.reset_index().to_dict("records")  # noqa: E731
    tables = Measured(tables=dict(
        table=records(f.main.table), p_ablation=records(f.ablations.p_table),
        distractor_ablation=records(f.ablations.d_table), top_k=records(f.curves.curve),
        top_k_generated=records(f.curves.contains), benchmarks=f.bench.rows, benchmark_notes=f.bench.notes,
        paper_table1=raft.PAPER_TABLE1, dsf_source=f.main.dsf_source,
        raft_dev=development_table(ch, f.main).to_dict("records")))
    run = ChapterRun(CHAPTER, ch.params, ch.folder, ch.clock)
    return run.save(Measured.merged(f.measured, headline, tables), judged_of(comparisons), lm=ch.lm)
