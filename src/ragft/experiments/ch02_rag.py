"""Chapter 2, RAG with LlamaIndex and Chroma: every stage of a retrieval pipeline, measured.

Sections, in the order the notebook runs them. Each step takes its inputs and returns its result
(ingest an Index of the stores, retrieval_grid a Grid: the test questions, the retrievers and the
chunk size and top-k chosen on development questions, which the later steps are handed); the
Chapter holds the set-up only.

  ingest               one fresh Chroma collection per chunk size; ingestion against the bare embedder
  retrieval_grid       recall@k by chunk size and top-k (dense): picks the chunk size and top-k
  retrieval_methods    dense, BM25, hybrid
  scored_answers       answers scored by candidate log-likelihood at each answer top-k (K9); at the
                       chosen top-k also attribution (citations), the listwise LL reranker (R3) and
                       the LL refusal score (refusal as a detector)
  answers              generated cited answers on a small subset: the format view
  refusal_threshold    R5's similarity threshold, on near misses and off-topic questions; the top
                       similarity as a refusal detector
  latency, scale       stage latencies of live queries; HNSW against exact search as the index grows
  real_data            SQuAD retrieval and answers, NaturalQuestions-Open read with its gold passage
  own_documents        the reader's folder (corpus_dir, questions_file), indexed with the same code

`finish`, the chapter's one recording step, judges the comparisons the plan declares on what the
sections returned (each its own `Measured`) and writes the results file. Per-question outcomes,
one condition per meaning:

  "<method> <size>-token hit@<k>"       1 when a relevant chunk is in the top k (retrieval)
  "scored top-<k>"                      1 when the gold value outscores its 3 look-alikes (chance 1/4)
  "attribution top-<k>"                 1 when "<gold> [i]" is most likely for a source i that holds the
                                        gold sentence (questions with such a source among the k)
  "LL rerank of <method> top-<k> hit@1" 1 when the most likely bare "[i]" is a relevant source
  "answer top-<k>"                      "contains" of each generated answer, with its tokens
  "answer top-<k> refusal"              1 when an unanswerable question was refused
  "citation top-<k>"                    1 when the generated answer cites a relevant source
  "SQuAD ...", "NQ gold passage", "own documents ..."   the same on real data and the reader's files
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics as answer_metrics, plots, rag, report, settings
from ..config import scale_tag
from ..constants import REFUSAL_ANSWER
from ..corpus import benchmarks
from ..drift import rate_tolerance
from ..generation import Generation, generate, timed
from ..progress import progress
from ..rag import bench, evaluation
from ..results import ChapterRun, Clock, Measured, judged_of, state_comparisons
from ..prose import StatedComparison, glue, glue_metrics
from ..scoring import rank_candidates
from ..stats import MAX_FALSE_REFUSALS, auroc, recall_at_fpr, wilson_interval
from .common import elsewhere_label, not_here, start

CHAPTER = "02_rag"
HEADLINE_K = 5  # recall@5 is a headline figure whatever top_ks holds
BEST_K_SHARE = 0.95  # the chosen top-k: the smallest within this share of the best recall
EF_CONSTRUCTION = 100  # Chroma's default HNSW graph-build breadth
REFUSAL_THRESHOLDS = np.round(np.arange(0.20, 0.81, 0.05), 2)
# Embeddings in float32: BLAS differences between CPUs move a mean cosine similarity by ~1e-6.
SIMILARITY_TOL = 0.01


class Skipped:
    """What a section that the `sections` parameter leaves out returns. Every attribute, call and
    iteration gives itself (or nothing), and it shows as one line, so the chapter's cells run through
    unchanged: a bring-your-own-documents run skips the knowledge base without a notebook of its own."""

    def __init__(self, section: str):
        self.section = section

    def __getattr__(self, name: str):
        if name.startswith("_"):  # IPython's and Python's own look-ups: not here
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __iter__(self):
        return iter(())

    def __repr__(self) -> str:
        return f"(skipped: {self.section} is not in this run's sections)"

    def _repr_markdown_(self) -> str:
        return f"*{self!r}*"


def section(name: str, figure: bool = False):
    """A chapter step of section `name`: skipped (a Skipped, or None for a figure, which the cell
    then glues and closes as nothing) when the run's sections leave it out or it is handed a skipped
    step's result."""
    import functools

    def wrap(step):
        @functools.wraps(step)
        def run_or_skip(*args, **kwargs):
            skipped = next((a for a in args if isinstance(a, Skipped)), None)
            ch = args[0] if args and isinstance(args[0], Chapter) else None
            if skipped is None and ch is not None and name not in ch.params.sections:
                skipped = Skipped(name)
            if skipped is not None:
                return None if figure else skipped
            return step(*args, **kwargs)
        return run_or_skip
    return wrap


def retrieval_condition(method: str, chunk_size: int, k: int) -> str:
    return f"{method} {chunk_size}-token hit@{k}"


def hits_at(items: list, rankings: list, k: int) -> dict[str, int]:
    """{qid: 1 when a relevant chunk is within the top k} over the answerable items, through the one
    implementation of relevance ranks (ragft.rag.evaluation.first_relevant_rank)."""
    out = {}
    for item, hits in zip(items, rankings):
        if item.kind == "unanswerable":
            continue
        rank = evaluation.first_relevant_rank(item, hits)
        out[item.qid] = int(rank is not None and rank <= k)
    return out


def generation_tokens(items: list, rankings: list, gen: Generation) -> dict[str, tuple[int, int]]:
    """{qid: (prompt tokens, completion tokens)} for the items rag.answer_batch sent to the model
    (those with a non-empty ranking, in order)."""
    asked = [it for it, hits in zip(items, rankings) if hits]
    return {it.qid: (p, c) for it, p, c in zip(asked, gen.prompt_tokens, gen.completion_tokens)}


def citation_outcomes(items: list, rankings: list, answers: list[str]) -> dict[str, int]:
    """{qid: 1 when the answer cites a relevant source}, for the answerable questions whose relevant
    chunk was among the sources: rag.citation_scores' accuracy, question by question."""
    out = {}
    for item, hits, answer in zip(items, rankings, answers):
        one = rag.citation_scores([item], [hits], [answer])
        if one["citation_n"]:
            out[item.qid] = int(one["citation_accuracy"])
    return out


def record(into: Measured, condition: str, scores: dict, tokens: dict | None = None) -> None:
    """Keep a condition's outcomes in a step's record when it has any (an empty part, e.g. no
    unanswerable questions, is left out), with the tokens of its own questions."""
    if scores:
        into.record(condition, scores, {q: tokens[q] for q in scores} if tokens else None)


def rate(into: Measured, key: str, value: float, n: int):
    """A share of n questions, left out when there were none (NaN is not a number the file keeps)."""
    if n and value is not None and not math.isnan(value):
        into.metric(key, value, "rate", n=n)


@dataclass(frozen=True)
class Chapter:
    """The chapter's set-up: parameters, results file, models, the knowledge base as pages, where
    Chroma keeps its collections, NaturalQuestions-Open when the data folder has it, and the reader's
    own inputs. No step writes here (frozen: a step that tried would fail): each returns what it
    measured and chose (Index, Grid, ...)."""

    params: object
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    lm: object
    embed_model: object
    kb: object
    pages: list
    where: dict  # Chroma: a local folder or a server
    nq: list = field(default_factory=list)  # NaturalQuestions-Open, when the data folder has it
    own: "OwnInputs | None" = None  # your documents and questions, read and checked before any model loads
    # names this run's knowledge-base collections, so ingestion is timed on fresh ones (issue 12)
    run_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def open_store(self, name: str, chunk_size: int):
        return rag.ChunkStore(name, embed_model=self.embed_model, chunk_size=chunk_size,
                              chunk_overlap=self.params.chunk_overlap, **self.where)

    @property
    def score_ks(self) -> list[int]:
        return sorted(set(self.params.top_ks) | {HEADLINE_K})

    @property
    def depth(self) -> int:
        return max(self.score_ks)

    def summary(self) -> str:
        lm = self.lm
        return (f"{lm.name}: {lm.n_params() / 1e6:.0f} M parameters, {lm.dtype}; embedder {self.params.embedder}\n"
                f"knowledge base {self.kb.version}: {len(self.kb.documents)} documents on {len(self.pages)} pages; "
                f"store: {self.where}")


def setup(params) -> Chapter:
    """Seeds and threads; the language model and the embedder; the knowledge base as pages; a fresh
    local Chroma folder (so ingestion is measured from scratch) or the configured server;
    NaturalQuestions-Open where the knowledge base's sections run and the data folder has it (the
    refusal threshold's off-topic questions, and the real-data section's gold passages)."""
    own = read_own_inputs(params)  # a bad file fails here, in seconds, not after the whole chapter
    folder, clock, lm, embed_model, kb = start(CHAPTER, params, embedder=True)
    chroma = folder / "chroma" / CHAPTER
    shutil.rmtree(chroma, ignore_errors=True)
    where = dict(host=params.chroma_host, port=params.chroma_port) if params.chroma_host else dict(path=chroma)
    nq = load_nq(params) if "knowledge_base" in params.sections else []
    return Chapter(params, clock, folder, lm, embed_model, kb, rag.kb_pages(kb, params.docs_per_page), where, nq, own)


def load_nq(params) -> list:
    """NaturalQuestions-Open from the data folder, or nothing (with a line saying why)."""
    try:
        return benchmarks.load_nq_open(params.data_dir or None)
    except benchmarks.DataUnavailable as e:
        print(f"NaturalQuestions-Open not available: {e}")
        return []


# ---------------------------------------------------------------------------------------------
# Ingestion


@dataclass
class Index:
    """The knowledge base ingested at every chunk size."""

    table: pd.DataFrame  # chunk size -> chunks, ingest and embedding seconds, what a second pass added
    stores: dict  # chunk size -> ChunkStore
    measured: Measured = field(default_factory=Measured)  # the ingest's throughput

    def styled(self):
        return self.table.style.format({"ingest_s": "{:.2f} s", "embed_s": "{:.2f} s"})


@section("knowledge_base")
def ingest(ch: Chapter) -> Index:
    """Ingest the pages at every chunk size (twice: the second pass must add nothing) and time the
    bare embedder on the same chunk texts. One row per chunk size, and the stores."""
    p, clock = ch.params, ch.clock
    encoder = rag.store.bare_encoder(ch.embed_model)
    encoder.encode(["warm-up"] * 8)  # the first call pays one-off set-up costs
    rows, stores, measured = [], {}, Measured()
    with clock.stage("ingest"):
        for size in p.chunk_sizes:
            # a collection of this run's own (issue 12): a re-run against a Chroma server that holds
            # last run's collection would otherwise time an ingest that adds nothing
            stores[size] = ch.open_store(f"kb-{size}-{ch.run_tag}", size)
            first = fresh_ingest(stores[size], ch.pages)
            again = stores[size].ingest(ch.pages)
            rows.append({"chunk_size": size, "chunks": first.chunks_added, "ingest_s": first.seconds,
                         "embed_s": first.embed_seconds, "chunks_added_again": again.chunks_added,
                         "docs_unchanged_again": again.docs_unchanged})
    table = pd.DataFrame(rows).set_index("chunk_size")
    texts = [t for size in p.chunk_sizes for t in stores[size].embed_texts(ch.pages)]
    _, encoder_s = timed(lambda: encoder.encode(texts, batch_size=64))
    pipeline = measured.metric("ingest_chunks_per_s", table.chunks.sum() / table.ingest_s.sum(), "machine")
    bare = measured.metric("embedder_only_chunks_per_s", len(texts) / encoder_s, "machine")
    measured.metric("ingest_share_of_embedder", pipeline / bare, "machine")
    return Index(table, stores, measured)


def fresh_ingest(store, pages: list):
    """Ingest `pages` into a store that must start empty, and check that every page and chunk was
    written by this call: the throughput the chapter publishes is that of a full ingest, never of a
    re-run that found the work done (issue 12)."""
    if store.count():
        raise RuntimeError(f"the collection holds {store.count()} chunks before ingesting: ingestion throughput "
                           "is measured on a fresh collection only")
    report = store.ingest(pages)
    if report.docs_added != len(pages) or report.chunks_added != store.count() or not report.chunks_added:
        raise RuntimeError(f"a fresh ingest of {len(pages)} pages added {report.docs_added} pages and "
                           f"{report.chunks_added} chunks, and the collection holds {store.count()}")
    return report


# ---------------------------------------------------------------------------------------------
# Chunk size and top-k


@dataclass
class Grid:
    """The retrieval grid on the test questions, and what every later knowledge-base step reads: the
    test questions, a retriever per chunk size, the questions' embeddings, and the chunk size and
    top-k chosen on development questions."""

    table: pd.DataFrame  # chunk size -> recall@k for every scored k, and MRR
    top_ks: list[int]  # the columns the heat map shows
    items: list  # the test questions (QAItems)
    retrievers: dict  # chunk size -> Retriever
    query_vectors: np.ndarray  # the test questions' embeddings
    chunk: int  # the chunk size, chosen on development questions
    k: int  # the top-k, chosen on the same
    dev_questions: list[str]  # those development questions (they also choose R5's refusal threshold)
    measured: Measured = field(default_factory=Measured)  # dense hits per question and size, the choice and its evidence

    @property
    def recall_cols(self) -> list[str]:
        return [f"recall_at_{k}" for k in self.top_ks]

    @property
    def questions(self) -> list[str]:
        return [it.question for it in self.items]

    @property
    def best(self):
        """The retriever at the chosen chunk size."""
        return self.retrievers[self.chunk]


@section("knowledge_base")
def retrieval_grid(ch: Chapter, index: Index) -> Grid:
    """Dense recall@k at every chunk size on the test questions. The chunk size (best MRR) and the
    top-k (the smallest within BEST_K_SHARE of the best recall there) that the answering experiments
    use are chosen on development questions: the knowledge base's other single-fact questions, which
    share no fact with the test ones (development_choice). Retrieval here is at the ceiling, so R1
    and R2 are compared on SQuAD articles (squad_articles)."""
    p, clock = ch.params, ch.clock
    items = rag.kb_items(ch.kb.sample("single", p.n_retrieval_questions, p.seed))
    questions = [it.question for it in items]
    retrievers = {size: rag.Retriever(index.stores[size], ch.embed_model) for size in p.chunk_sizes}
    vectors = retrievers[p.chunk_sizes[0]].embed(questions)
    rows, measured = [], Measured()
    with clock.stage("retrieval_grid"):
        for size, retriever in retrievers.items():
            ranked = retriever.dense(questions, ch.depth, vectors=vectors)
            rows.append({"chunk_size": size, **rag.retrieval_scores(items, ranked, ch.score_ks)})
            for k in ch.score_ks:
                measured.record(retrieval_condition("dense", size, k), hits_at(items, ranked, k))
        dev = development_choice(ch, items, retrievers)
    table = pd.DataFrame(rows).set_index("chunk_size")
    n = len(items)
    measured.metric("best_chunk_size", dev["chunk"], "choice")
    measured.metric("best_top_k", dev["k"], "choice")
    measured.metric("dev_retrieval_n", dev["n"], "exact")
    measured.metric("recall_at_5_best", table.loc[dev["chunk"], f"recall_at_{HEADLINE_K}"], "rate", n=n)
    measured.metric("mrr_best", table.loc[dev["chunk"], "mrr"], "mean", n=n)
    measured.metric("n_retrieval_questions", n, "exact")
    measured.table("development_choice", dev["table"].reset_index().to_dict("records"))
    return Grid(table, list(p.top_ks), items, retrievers, vectors, dev["chunk"], dev["k"], dev["questions"], measured)


def development_choice(ch: Chapter, test_items: list, retrievers: dict) -> dict:
    """The chunk size and top-k the answering experiments use, chosen on development questions: up to
    n_retrieval_questions of the knowledge base's single-fact questions that are not test questions
    (one fact each, so none shares a fact with a test question). Returns them ("chunk", "k") with the
    number of development questions ("n"), the questions themselves ("questions") and the evidence
    (MRR and recall per chunk size, "table", which the grid keeps on the results file)."""
    p = ch.params
    test = {it.qid for it in test_items}
    pool = [q for q in ch.kb.sample("single", len(ch.kb.by_kind("single")), p.seed + 1) if q.qid not in test]
    dev = rag.kb_items(pool[:p.n_retrieval_questions])
    if not dev:
        raise ValueError("no development questions: every single-fact question of this knowledge base is a test "
                         "question; lower n_retrieval_questions or grow the knowledge base (kb)")
    questions = [it.question for it in dev]
    vectors = retrievers[p.chunk_sizes[0]].embed(questions)
    rows = [{"chunk_size": size, **rag.retrieval_scores(dev, r.dense(questions, ch.depth, vectors=vectors), ch.score_ks)}
            for size, r in retrievers.items()]
    table = pd.DataFrame(rows).set_index("chunk_size")
    chunk = int(table["mrr"].idxmax())  # the size that ranks the relevant chunk highest
    at_best = table.loc[chunk, [f"recall_at_{k}" for k in p.top_ks]]
    k = min(k for k in p.top_ks if at_best[f"recall_at_{k}"] >= BEST_K_SHARE * at_best.max())
    glue("best_k_share", f"{BEST_K_SHARE:.0%}")
    return {"n": len(dev), "table": table, "chunk": chunk, "k": k, "questions": questions}


@section("knowledge_base", figure=True)
def heatmap(grid: Grid):
    return plots.recall_heatmap(grid.table, grid.top_ks)


# ---------------------------------------------------------------------------------------------
# Dense, keywords, hybrid, rerank


@dataclass
class Methods:
    table: pd.DataFrame  # method -> n, recall@k, MRR, ms per query
    score_ks: list[int]
    measured: Measured = field(default_factory=Measured)  # BM25's and hybrid's hits per question


@section("knowledge_base")
def retrieval_methods(ch: Chapter, grid: Grid) -> Methods:
    """Dense, BM25 and hybrid on every retrieval question at the chosen chunk size, a table (at the
    ceiling here: hybrid against dense is compared on SQuAD articles). (Reranking is scored with the
    answers: the LL reranker reads the same prompt the answer scoring reads.)"""
    best, size, items = grid.best, grid.chunk, grid.items
    rows, measured = [], Measured()
    for name in ("dense", "bm25", "hybrid"):
        ranked, seconds = timed(lambda: best.search(grid.questions, ch.depth, name, vectors=grid.query_vectors))
        rows.append({"method": name, "n": len(items), **rag.retrieval_scores(items, ranked, ch.score_ks),
                     "ms_per_query": 1000 * seconds / len(items)})
        if name != "dense":  # dense at this size is the grid's, recorded there
            for k in ch.score_ks:
                measured.record(retrieval_condition(name, size, k), hits_at(items, ranked, k))
    table = pd.DataFrame(rows).set_index("method")
    n = len(items)
    for name in ("dense", "bm25", "hybrid"):
        measured.metric(f"{name}_recall_at_5", table.loc[name, "recall_at_5"], "rate", n=n)
    if "recall_at_1" in table:
        measured.metric("hybrid_recall_at_1", table.loc["hybrid", "recall_at_1"], "rate", n=n)
    measured.metric("hybrid_ms_per_query", table.loc["hybrid", "ms_per_query"], "machine")
    return Methods(table, ch.score_ks, measured)


@section("knowledge_base")
def methods_styled(methods: Methods):
    fmt = {**{f"recall_at_{k}": "{:.1%}" for k in methods.score_ks}, "mrr": "{:.3f}", "ms_per_query": "{:.1f} ms"}
    return methods.table.style.format(fmt, na_rep="-")


# ---------------------------------------------------------------------------------------------
# Answers, citations, reranking and refusal scored by candidate log-likelihood


def reply_candidates(values: list[str], gold: int | None, n_sources: int) -> list[str]:
    """One question's candidate replies, ranked in one prefill of its prompt (question and numbered
    sources): the look-alike values (the answer; chance 1 / len(values)), the refusal, and with two
    or more sources the gold value followed by each citation ("4 kg [2]", the format the prompt asks
    for: attribution) and each bare citation ("[2]": which source the model turns to, a listwise
    reranker that does not know the answer). Unanswerable questions (gold None) get values and the
    refusal only. `split_scores` reads the scores back in this layout."""
    out = list(values) + [REFUSAL_ANSWER]
    if gold is not None and n_sources >= 2:
        out += [f"{values[gold]} [{i}]" for i in range(1, n_sources + 1)]
        out += [f"[{i}]" for i in range(1, n_sources + 1)]
    return out


def split_scores(scores: list[float], n_values: int, n_sources: int) -> dict:
    """reply_candidates' log-likelihoods by part: values, refusal, cite (gold + [i]), source ([i])."""
    cite = scores[n_values + 1:n_values + 1 + n_sources]
    source = scores[n_values + 1 + n_sources:n_values + 1 + 2 * n_sources]
    return {"values": scores[:n_values], "refusal": scores[n_values], "cite": cite, "source": source}


def first_best(scores: list[float]) -> int:
    return int(np.argmax(scores))


def question_outcomes(scores: list[float], n_values: int, gold: int | None, relevant: set[int], n_sources: int) -> dict:
    """One question's outcomes from its candidate scores (reply_candidates' layout). relevant: the
    0-based positions of the sources that hold the gold sentence. Always "refusal_score" (the
    refusal's LL minus the best value's); for an answerable question also "answer" (1 when the gold
    value beats every look-alike; a tie is wrong), "pool_hit", "retrieval_hit1", and with two
    sources or more "rerank_hit1" and, when a relevant source is among them, "attribution" and
    "cite_position" (the 1-based source number the model cites the gold value with) and
    "relevant_sources" (the 1-based numbers of the sources that hold it)."""
    parts = split_scores(scores, n_values, n_sources)
    out = {"refusal_score": parts["refusal"] - max(parts["values"])}
    if gold is None:
        return out
    values = parts["values"]
    out["answer"] = int(all(values[gold] > x for j, x in enumerate(values) if j != gold))
    out["pool_hit"] = int(bool(relevant))
    out["retrieval_hit1"] = int(0 in relevant)
    if n_sources:
        out["rerank_hit1"] = int(first_best(parts["source"]) in relevant)
        if relevant:
            out["attribution"] = int(first_best(parts["cite"]) in relevant)
            out["cite_position"] = first_best(parts["cite"]) + 1
            out["relevant_sources"] = sorted(i + 1 for i in relevant)
    return out


@dataclass
class ScoredAt:
    """One answer top-k scored by log-likelihood: per-question outcomes and scores."""

    k: int
    answer: dict  # qid -> 1 when the gold value outscores every look-alike (chance 1 / candidates)
    chance: float
    refusal_score: dict  # qid -> LL(refusal) - best value's LL, answerable and unanswerable questions
    attribution: dict  # qid -> 1 when "gold [i]" is most likely for a source i holding the gold sentence
    attribution_chance: float  # mean share of the sources that hold it, over the eligible questions
    rerank_hit1: dict  # qid -> 1 when the most likely bare "[i]" is a relevant source
    retrieval_hit1: dict  # qid -> 1 when the retrieval's own first chunk is relevant (same lists)
    pool_hit: dict  # qid -> 1 when any of the k chunks is relevant
    prompt_tokens: dict  # qid -> prompt tokens
    seconds: float  # this top-k's share of the scoring time (shared prefixes prorated by prompt tokens)
    n_unanswerable: int
    cite_position: dict = field(default_factory=dict)  # qid -> the source number "gold [i]" is most likely with
    relevant_sources: dict = field(default_factory=dict)  # qid -> the source numbers that hold the gold sentence


def score_top_ks(ch: Chapter, retriever, answerable: list, unanswerable: list, ks: list[int]) -> dict[int, ScoredAt]:
    """Retrieve each question's top max(ks) chunks (the configured method; a top-k is the first k of
    them), then rank its candidate replies given the numbered chunks at every k, and for the
    unanswerable questions at the fewest chunks only (ragft.scoring.rank_candidates). A question's
    prompts at different k share their beginning (system prompt and its first chunks), so they are
    scored in one call that computes that beginning once."""
    p = ch.params
    by_id = {q.qid: q for q in ch.kb.questions}
    asked = answerable + unanswerable
    ranked = retriever.search([it.question for it in asked], max(ks), p.retrieval)
    out = {k: ScoredAt(k, {}, 0.0, {}, {}, float("nan"), {}, {}, {}, {}, 0.0, 0) for k in ks}
    chances, shares, seconds = {k: [] for k in ks}, {k: [] for k in ks}, 0.0
    for it, hits_all in progress(list(zip(asked, ranked)), desc="scoring"):
        values, gold = ch.kb.candidates(by_id[it.qid], k=3, seed=p.seed)
        its_ks = ks if gold is not None else [ks[0]]  # refusal: the cheapest prompt is enough to rank it
        convs, cands, golds = [], [], []
        for k in its_ks:
            hits = hits_all[:k]
            convs.append(rag.rag_messages(it.question, hits))
            cands.append(reply_candidates(values, gold, len(hits)))
            golds.append(gold if gold is not None else len(values))  # the refusal is right when nothing is
        ranking = rank_candidates(ch.lm, convs, cands, golds, desc=it.qid)
        seconds += ranking.seconds
        for k, row, tokens in zip(its_ks, ranking.scores, ranking.prompt_tokens):
            sc, hits = out[k], hits_all[:k]
            n_src = len(hits) if gold is not None and len(hits) >= 2 else 0
            sc.prompt_tokens[it.qid] = tokens
            relevant = {i for i, h in enumerate(hits) if it.is_relevant(h.doc_id, h.text)}
            got = question_outcomes(row, len(values), gold, relevant, n_src)
            sc.refusal_score[it.qid] = got.pop("refusal_score")
            if gold is None:
                sc.n_unanswerable += 1
                continue
            chances[k].append(1 / len(values))
            if "attribution" in got:
                shares[k].append(len(relevant) / n_src)
            for name, value in got.items():
                getattr(sc, name)[it.qid] = value
    all_tokens = sum(sum(sc.prompt_tokens.values()) for sc in out.values())
    for k, sc in out.items():
        sc.chance = float(np.mean(chances[k])) if chances[k] else float("nan")
        sc.attribution_chance = float(np.mean(shares[k])) if shares[k] else float("nan")
        sc.seconds = seconds * sum(sc.prompt_tokens.values()) / all_tokens  # the shared time, by prompt tokens
    return out


@dataclass
class Scored:
    by_k: dict  # answer top-k -> ScoredAt
    best_k: int
    table: pd.DataFrame  # one row per answer top-k: n, accuracy and its interval, chance, tokens, seconds
    detectors: pd.DataFrame  # refusal detectors: AUROC and recall at <= 5 % false refusals
    pointwise_rerank_s: float  # what the pointwise yes/no reranker would cost a question here (estimate)
    measured: Measured = field(default_factory=Measured)  # every top-k's outcomes, attribution and reranking
    choices: dict = field(default_factory=dict)  # the plan's placeholders K9 and R3 are judged at
    unmeasured: dict = field(default_factory=dict)  # comparison id -> why this run cannot judge it

    def glue(self) -> None:
        glue("ll_k_list", ", ".join(f"top-{k}" for k in self.by_k))
        glue("max_false_refusals", f"{MAX_FALSE_REFUSALS:.0%}")
        glue("pointwise_rerank_s", self.pointwise_rerank_s)


def rate_row(name: str, outcomes: dict, chance: float, **extra) -> dict:
    n, hits = len(outcomes), sum(outcomes.values())
    lo, hi = wilson_interval(hits, n)
    return {"condition": name, "n": n, "accuracy": hits / n if n else float("nan"), "lo": lo, "hi": hi,
            "chance": chance, **extra}


@section("knowledge_base")
def scored_answers(ch: Chapter, grid: Grid) -> Scored:
    """The answers scored by candidate log-likelihood on n_scored_questions answerable questions at
    every answer top-k (K9: the fewest chunks against the most), and at the chosen top-k also
    attribution (which numbered source the gold answer is cited with), the listwise LL reranker
    (R3: its first source against the retrieval's first) and the LL refusal score on
    n_scored_unanswerable unanswerable questions at the fewest chunks (refusal as a detector)."""
    p, clock, best_k = ch.params, ch.clock, grid.k
    answerable = grid.items[:p.n_scored_questions]
    unanswerable = rag.kb_items(ch.kb.sample("unanswerable", p.n_scored_unanswerable, p.seed))
    ks = sorted(set(p.answer_top_ks) | {best_k})
    rows, measured = [], Measured()
    with clock.stage("scored_answers"):
        by_k = score_top_ks(ch, grid.best, answerable, unanswerable, ks)
        for k, sc in by_k.items():
            if k == ks[0]:
                measured.record(f"scored top-{k} unanswerable refusal score", {q: v for q, v in sc.refusal_score.items()
                                                                          if q not in sc.answer})
            measured.record(f"scored top-{k}", sc.answer, {q: (sc.prompt_tokens[q], 0) for q in sc.answer})
            n = len(sc.answer)
            rows.append(rate_row(f"top-{k}", sc.answer, sc.chance, top_k=k,
                                 prompt_tokens=float(np.mean([sc.prompt_tokens[q] for q in sc.answer])),
                                 s_per_question=sc.seconds / len(sc.prompt_tokens)))
            measured.metric(f"ll_top{k}_acc", rows[-1]["accuracy"], "rate", n=n)
            measured.metric(f"ll_top{k}_n", n, "exact")
    table = pd.DataFrame(rows).set_index("condition")
    main = by_k[best_k]
    n = len(main.answer)
    measured.metric("rag_ll_acc", table.loc[f"top-{best_k}", "accuracy"], "rate", n=n)
    measured.metric("rag_ll_n", n, "exact")
    measured.metric("ll_chance", main.chance, "exact")
    choices = {"fewer": ks[0], "more": ks[-1]}
    unmeasured = {} if len(ks) > 1 else {"K9-top-k": f"only top-{ks[0]} was scored, so there is nothing to compare"}
    # citations and reranking need two sources or more: at the chosen top-k, else the largest scored
    reranked = _attribution_and_rerank(ch, measured, main if best_k >= 2 else by_k[ks[-1]])
    choices["R3-rerank"] = reranked
    if not reranked:
        unmeasured["R3-rerank"] = f"the chosen top-k is {main.k}: one source leaves nothing to rerank"
    fewest = by_k[ks[0]]  # the refusal score is measured at the fewest chunks
    unans = sorted(q for q in fewest.refusal_score if q not in fewest.answer)
    detectors = refusal_detectors(measured, {"LL refusal score": (
        "refusal_ll", [fewest.refusal_score[q] for q in unans], [fewest.refusal_score[q] for q in fewest.answer])})
    glue("refusal_ll_k", ks[0])
    # the pointwise yes/no reranker this chapter used before reads one (question, chunk) prompt per
    # pool candidate, about a top-1 prompt each: its cost at this run's prefill speed
    per_chunk_s = fewest.seconds / len(fewest.prompt_tokens) / ks[0]
    pointwise = measured.metric("pointwise_rerank_s_per_query_est", POINTWISE_POOL * per_chunk_s, "machine")
    return Scored(by_k, best_k, table, detectors, pointwise, measured, choices, unmeasured)


POINTWISE_POOL = 8  # the pool the pointwise LM reranker reordered in the published runs before


def _attribution_and_rerank(ch: Chapter, measured: Measured, main: ScoredAt) -> dict:
    """Attribution and the LL reranker at `main`'s top-k, kept in the step's record (`measured`);
    returns R3's placeholders ({"method", "k"}), or {} where one source leaves nothing to rerank."""
    k = main.k
    if main.attribution:
        measured.record(f"attribution top-{k}", main.attribution)
        n = len(main.attribution)
        acc = sum(main.attribution.values()) / n
        lo, hi = wilson_interval(sum(main.attribution.values()), n)
        measured.metric("attribution_accuracy", acc, "rate", n=n)
        measured.metric("attribution_n", n, "exact")
        measured.metric("attribution_chance", main.attribution_chance, "derived", tol=rate_tolerance(n))
        glue("attribution_lo", lo)
        glue("attribution_hi", hi)
        # why it cannot cite: the source number it prefers, whichever source holds the answer
        position, count = Counter(main.cite_position.values()).most_common(1)[0]
        measured.metric("attribution_preferred_source", position, "exact")
        measured.metric("attribution_preferred_source_share", count / n, "rate", n=n)
        holds = sum(position in main.relevant_sources[q] for q in main.cite_position)
        measured.metric("attribution_preferred_source_relevant_share", holds / n, "rate", n=n)
        why = f"It cites source [{position}] for {count / n:.0%} of these questions, and that source holds the answer in {holds / n:.0%} of them"
        if acc < main.attribution_chance and count / n > 0.5:
            why += ": a preference for a position, not a reading of the sources, which is why it attributes below chance"
        glue("attribution_why", why)
    if main.rerank_hit1:
        method = ch.params.retrieval
        name, base = f"LL rerank of {method} top-{k} hit@1", f"{method} top-{k} hit@1 (scored questions)"
        measured.record(name, main.rerank_hit1)
        measured.record(base, main.retrieval_hit1)
        n = len(main.rerank_hit1)
        measured.metric("rerank_recall_at_1", sum(main.rerank_hit1.values()) / n, "rate", n=n)
        measured.metric("rerank_subset_hybrid_recall_at_1", sum(main.retrieval_hit1.values()) / n, "rate", n=n)
        # the reranked list is the same k chunks in another order: its recall@5 is the pool's recall@k
        measured.metric("rerank_recall_at_5", sum(main.pool_hit.values()) / n, "rate", n=n)
        measured.metric("rerank_n", n, "exact")
        measured.metric("rerank_ms_per_query", 1000 * main.seconds / len(main.prompt_tokens), "machine")
        return {"method": method, "k": k}
    return {}


def refusal_detectors(into: Measured, detectors: dict) -> pd.DataFrame:
    """Refusal as a detector, unanswerable questions the positives: {name: (metric key, scores of
    unanswerable questions, scores of answerable ones)}, a higher score meaning "refuse". Each gets
    its AUROC and its refusal recall at <= 5 % false refusals (with a Wilson interval), as metrics."""
    rows = []
    for name, (key, pos, neg) in detectors.items():
        if not pos or not neg:
            continue
        area = auroc(pos, neg)
        recall, _ = recall_at_fpr(pos, neg)  # at most stats.MAX_FALSE_REFUSALS of the answerable refused
        lo, hi = wilson_interval(recall * len(pos), len(pos))
        into.metric(f"{key}_auroc", area, "derived", tol=rate_tolerance(min(len(pos), len(neg))))
        into.metric(f"{key}_recall_at_5pct_fpr", recall, "rate", n=len(pos))
        into.metric(f"{key}_n_unanswerable", len(pos), "exact")
        into.metric(f"{key}_n_answerable", len(neg), "exact")
        rows.append({"detector": name, "unanswerable": len(pos), "answerable": len(neg), "AUROC": area,
                     "recall at <= 5 % false refusals": recall, "lo": lo, "hi": hi})
    return pd.DataFrame(rows).set_index("detector") if rows else pd.DataFrame()


@section("knowledge_base")
def detectors_styled(*tables: pd.DataFrame):
    t = pd.concat([x for x in tables if len(x)])
    return t.style.format({"AUROC": "{:.2f}", "recall at <= 5 % false refusals": "{:.0%}", "lo": "{:.0%}",
                           "hi": "{:.0%}"})


@section("knowledge_base")
def scored_table(sc: Scored) -> pd.DataFrame:
    t = sc.table.copy()
    return t.style.format({"accuracy": "{:.1%}", "lo": "{:.0%}", "hi": "{:.0%}", "chance": "{:.0%}",
                           "prompt_tokens": "{:.0f}", "s_per_question": "{:.2f} s"})


@section("knowledge_base", figure=True)
def scored_plot(sc: Scored):
    """LL accuracy by answer top-k with Wilson error bars, and chance."""
    return plots.accuracy_by_context(sc.table)


# ---------------------------------------------------------------------------------------------
# Answers with citations


@dataclass
class Answers:
    rows: list[dict]  # ragft.metrics.condition_row, one per answer top-k
    table: pd.DataFrame
    n_unanswerable: int
    measured: Measured = field(default_factory=Measured)  # the generated answers' outcomes and metrics

    def glue(self, retrieval: str) -> None:
        glue("retrieval_method", retrieval)
        glue("n_unanswerable_answered", self.n_unanswerable)


@section("knowledge_base")
def answers(ch: Chapter, grid: Grid) -> Answers:
    """Generated cited answers, the format view, on a small subset: n_answer_questions answerable
    questions at every answer top-k (and the chosen one) with the configured retrieval method, and
    n_unanswerable unanswerable ones at the chosen top-k. The claims are decided on the scored
    answers (scored_answers); these rates carry their intervals and no paired verdict."""
    p, clock, best_k = ch.params, ch.clock, grid.k
    answer_items = grid.items[:p.n_answer_questions]
    unanswerable = rag.kb_items(ch.kb.sample("unanswerable", p.n_unanswerable, p.seed))
    rows, ks = [], sorted(set(p.answer_top_ks) | {best_k})  # the chosen top-k is always answered
    measured = Measured()
    with clock.stage("answers"):
        for k in ks:
            asked = answer_items + (unanswerable if k == best_k else [])  # refusals at the chosen top-k only
            ranked = grid.best.search([it.question for it in asked], k, p.retrieval)
            gen, texts = rag.answer_batch(ch.lm, asked, ranked, p.max_new_tokens, p.batch_size, desc=f"top-{k}")
            row = answer_metrics.condition_row(f"top-{k}", gen, asked, p.price_per_mtok, top_k=k,
                                               **rag.retrieval_scores(asked, ranked, [k]),
                                               **rag.citation_scores(asked, ranked, texts))
            row["retrieved_recall"] = row.pop(f"recall_at_{k}")
            rows.append(row)
            tokens = generation_tokens(asked, ranked, gen)
            answered, refused = answer_metrics.answer_outcomes(asked, gen.texts)
            record(measured, f"answer top-{k}", answered, tokens)
            record(measured, f"answer top-{k} refusal", refused, tokens)
            record(measured, f"citation top-{k}", citation_outcomes(asked, ranked, texts))
    table = pd.DataFrame(rows).set_index("condition")
    _answer_metrics(measured, table.loc[f"top-{best_k}"], table, len(answer_items), len(unanswerable))
    return Answers(rows, table, len(unanswerable), measured)


def _answer_metrics(into: Measured, main: pd.Series, table: pd.DataFrame, n: int, n_unanswerable: int) -> None:
    """The answers' metrics: `main` is the chosen top-k's row of `table`."""
    into.metric("rag_contains", main["contains"], "rate", n=n)
    # Wilson bounds move with the rate: one flipped answer moves them by about as much as the rate
    into.metric("rag_contains_lo", main["contains_lo"], "derived", tol=rate_tolerance(n))
    into.metric("rag_contains_hi", main["contains_hi"], "derived", tol=rate_tolerance(n))
    into.metric("rag_em", main["em"], "rate", n=n)
    into.metric("rag_f1", main["f1"], "mean", n=n)
    rate(into, "rag_refusal_acc", main.get("refusal_acc", np.nan), n_unanswerable)
    into.metric("rag_false_refusal", main["false_refusal"], "rate", n=n)
    rate(into, "citation_accuracy", main["citation_accuracy"], int(main["citation_n"]))
    into.metric("citation_rate", main["citation_rate"], "rate", n=int(main["n"]))
    into.metric("rag_prompt_tokens", main["prompt_tokens"], "exact")
    into.metric("rag_cost_per_1k_usd", main["cost_per_1k_usd"], "exact")
    into.metric("n_answer_questions", n, "exact")
    into.metric("rag_contains_n", n, "exact")
    into.metric("rag_refusal_n", n_unanswerable, "exact")
    into.metric("citation_n", int(main["citation_n"]), "exact")
    for k, row in table.set_index("top_k").iterrows():
        into.metric(f"contains_top{k}", row["contains"], "rate", n=n)
        into.metric(f"prompt_tokens_top{k}", row["prompt_tokens"], "exact")


@section("knowledge_base", figure=True)
def context_plot(ans: Answers):
    return plots.answers_by_context(ans.table)


# ---------------------------------------------------------------------------------------------
# Refusing under a similarity threshold (R5)


@dataclass
class Refusal:
    """R5 has no paired comparison here (a threshold trades refusals of unanswerable questions for
    refusals of answerable ones): it is reported as rates with Wilson intervals, at a threshold chosen
    on development questions."""

    sweep: pd.DataFrame  # threshold -> refusal precision, recall, F1, J, answerable refused (near misses)
    offtopic: pd.DataFrame | None  # the same for off-topic questions, when NQ is available
    n_answerable: int
    n_near_miss: int
    n_offtopic: int
    detectors: pd.DataFrame  # the top similarity as a refusal detector: AUROC, recall at <= 5 % false refusals
    threshold: float  # the operating point, chosen on development questions (dev_refusal_threshold)
    measured: Measured = field(default_factory=Measured)  # the rates at the chosen threshold, the detector

    def glue(self) -> None:
        """The chosen threshold's rates with their intervals (the metrics refusal_threshold records)."""
        at = self.sweep.loc[self.threshold]
        for key, rate, n in (("refusal_recall_at_chosen", at["refusal_recall"], self.n_near_miss),
                             ("answerable_refused_at_chosen", at["answerable_refused"], self.n_answerable)):
            lo, hi = wilson_interval(rate * n, n)
            glue(f"{key}_lo", lo)
            glue(f"{key}_hi", hi)
        glue("n_near_miss", self.n_near_miss)
        if self.offtopic is not None:
            r = self.offtopic.loc[self.threshold, "refusal_recall"]
            lo, hi = wilson_interval(r * self.n_offtopic, self.n_offtopic)
            glue("offtopic_sentence", f"The same threshold refuses {r:.0%} (95 % interval {lo:.0%} to {hi:.0%}) "
                 f"of {self.n_offtopic} off-topic questions.")
        else:
            glue("offtopic_sentence", "The off-topic questions need NaturalQuestions-Open in the data folder; "
                 "it is absent in this run.")


@section("knowledge_base")
def refusal_threshold(ch: Chapter, grid: Grid) -> Refusal:
    """Refuse whenever the best dense similarity is under a threshold: a sweep over thresholds for the
    knowledge base's unanswerable questions (near misses) and, when the data folder has them,
    off-topic NaturalQuestions (the set-up's), against the test questions. The operating point is
    chosen on the development questions alone (dev_refusal_threshold), so its rates are not tuned
    on the questions they are reported on."""
    best, measured = grid.best, Measured()

    def top_similarity(qs):
        return [h[0].score if h else 0.0 for h in best.dense(qs, 1)]

    answerable_sim = top_similarity(grid.questions)
    near_miss = rag.kb_items(ch.kb.by_kind("unanswerable"))
    near_sim = top_similarity([it.question for it in near_miss])
    sweep = pd.DataFrame(evaluation.refusal_sweep(answerable_sim, near_sim, REFUSAL_THRESHOLDS)).set_index("threshold")
    t = dev_refusal_threshold(measured, top_similarity(grid.dev_questions))
    n_a, n_u = len(grid.items), len(near_miss)
    f1_tol = rate_tolerance(n_a) + rate_tolerance(n_u)  # F1 and J of refusals move with their two rates
    measured.metric("refusal_f1_at_chosen", sweep.loc[t, "refusal_f1"], "derived", tol=f1_tol)
    measured.metric("refusal_j_at_chosen", sweep.loc[t, "refusal_j"], "derived", tol=f1_tol)
    measured.metric("refusal_recall_at_chosen", sweep.loc[t, "refusal_recall"], "rate", n=n_u)
    measured.metric("answerable_refused_at_chosen", sweep.loc[t, "answerable_refused"], "rate", n=n_a)
    # In hindsight, on the test questions themselves: what a threshold tuned on them would claim
    # (highest J; highest F1, which with few near misses is close to refusing everything)
    measured.metric("refusal_j_max", sweep.refusal_j.max(), "derived", tol=f1_tol)
    measured.metric("refusal_f1_max", sweep.refusal_f1.max(), "derived", tol=f1_tol)
    measured.metric("refusal_f1_refuse_all", 2 * n_u / (2 * n_u + n_a), "exact")  # recall 1, precision n_u / (n_u + n_a)
    measured.metric("refusal_near_miss_n", n_u, "exact")
    detectors = refusal_detectors(measured, {"top retrieval similarity (negated)": (
        "refusal_sim", [-x for x in near_sim], [-x for x in answerable_sim])})
    offtopic, n_off = None, 0
    if ch.nq:
        offtopic_sim = top_similarity([it.question for it in ch.nq[:n_u]])
        n_off = len(offtopic_sim)
        offtopic = pd.DataFrame(evaluation.refusal_sweep(answerable_sim, offtopic_sim, REFUSAL_THRESHOLDS)).set_index("threshold")
        measured.metric("offtopic_refusal_recall_at_chosen", offtopic.loc[t, "refusal_recall"], "rate", n=n_off)
        measured.metric("offtopic_refusal_f1_at_chosen", offtopic.loc[t, "refusal_f1"], "derived",
                        tol=rate_tolerance(n_a) + rate_tolerance(n_off))
    return Refusal(sweep, offtopic, n_a, n_u, n_off, detectors, t, measured)


def dev_refusal_threshold(into: Measured, dev_similarities: list[float]) -> float:
    """R5's operating point, chosen on the development questions (answerable, none a test question):
    the highest swept threshold that refuses at most MAX_FALSE_REFUSALS of them. No unanswerable
    question is looked at, so the near misses' and off-topic questions' rates at it are honest."""
    t = evaluation.threshold_for_false_refusals(dev_similarities, REFUSAL_THRESHOLDS, MAX_FALSE_REFUSALS)
    n = len(dev_similarities)
    into.metric("refusal_threshold_chosen", t, "choice")
    into.metric("refusal_dev_refused", float(np.mean(np.asarray(dev_similarities) < t)), "rate", n=n)
    into.metric("refusal_dev_n", n, "exact")
    return t


@section("knowledge_base", figure=True)
def refusal_plot(ref: Refusal):
    return plots.refusal_sweep(ref.sweep, ref.offtopic, ref.threshold)


# ---------------------------------------------------------------------------------------------
# Where the time goes


@dataclass
class Latency:
    summary: dict  # stage -> {"p50", "p95"} in ms
    n: int
    measured: Measured = field(default_factory=Measured)  # the stages' medians

    @property
    def table(self) -> pd.DataFrame:
        out = pd.DataFrame(self.summary).T.rename(columns={"p50": "measured p50 (ms)", "p95": "measured p95 (ms)"})
        out["S2 quoted (ms)"] = [evaluation.S2_CLAIMED_MS.get(s, np.nan) for s in out.index]
        return out

    def glue(self) -> None:
        glue("n_latency_queries", self.n)
        glue("lookup_p50_ms", self.summary["embed_ms"]["p50"] + self.summary["search_ms"]["p50"])


@section("knowledge_base")
def latency(ch: Chapter, grid: Grid) -> Latency:
    """n_latency_queries questions answered one at a time, as a service would, each stage timed."""
    clock, times, measured = ch.clock, [], Measured()
    with clock.stage("latency"):
        for it in grid.items[:ch.params.n_latency_queries]:
            _, _, t = rag.answer_live(it.question, grid.best, ch.lm, grid.k, max_new_tokens=ch.params.max_new_tokens)
            times.append(t)
    lat = evaluation.latency_summary(times)
    for key, stage in (("ttft_p50_ms", "ttft_ms"), ("embed_p50_ms", "embed_ms"), ("search_p50_ms", "search_ms"),
                       ("to_first_token_p50_ms", "to_first_token_ms"), ("total_p50_ms", "total_ms")):
        measured.metric(key, lat[stage]["p50"], "machine")
    measured.metric("retrieval_share_of_first_token",
                    (lat["embed_ms"]["p50"] + lat["search_ms"]["p50"]) / lat["to_first_token_ms"]["p50"], "machine")
    return Latency(lat, len(times), measured)


# ---------------------------------------------------------------------------------------------
# Scale: HNSW against exact search


@dataclass
class Scale:
    rows: list[dict]  # by index size
    ef_rows: list[dict]  # by ef_search, at the largest size
    filler: dict
    measured: Measured = field(default_factory=Measured)  # the timings and HNSW's recall

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).set_index("chunks")

    def styled(self):
        t = self.table
        return t.style.format({"insert_s": "{:.1f} s", "hnsw_recall_at_10": "{:.1%}",
                               **{c: "{:.2f} ms" for c in t.columns if c.endswith("_ms")}})

    def ef_styled(self):
        t = pd.DataFrame(self.ef_rows).set_index("ef_search").sort_index()
        return t.style.format({"hnsw_recall_at_10": "{:.1%}", **{c: "{:.2f} ms" for c in t.columns if c.endswith("_ms")}})

    def glue(self, params) -> None:
        t = self.table
        largest, smallest = t.index.max(), t.index.min()
        grow = lambda col: t.loc[largest, col] / t.loc[smallest, col]
        glue("ef_construction", EF_CONSTRUCTION)
        glue("ef_search_used", params.ef_search[0])
        glue("scale_sizes_text", ", ".join(f"{s:,}" for s in params.scale_sizes))
        glue("largest_tag", f"{largest:,}")
        glue("scale_growth_sentence", f"from {smallest:,} to {largest:,} chunks exact search became "
             f"{grow('exact_p50_ms'):.0f} times slower and HNSW {grow('hnsw_p50_ms'):.1f} times")
        for key in ("hnsw_p50_ms", "exact_p50_ms", "hnsw_recall_at_10", "insert_s"):
            glue(f"largest_{key}", t.loc[largest, key])


@section("scale")
def scale(ch: Chapter, index: Index, grid: Grid) -> Scale:
    """Grow one collection through scale_sizes (real chunk vectors, then Gaussian fillers with their
    mean and covariance) and time HNSW against exact search at each size (ragft.rag.bench)."""
    p, clock, measured = ch.params, ch.clock, Measured()
    real = np.concatenate([np.asarray(s.collection.get(include=["embeddings"])["embeddings"]) for s in index.stores.values()])
    queries = grid.query_vectors[:p.n_scale_queries]
    with clock.stage("scale"):
        rows, ef_rows, filler = bench.scale_benchmark(real, queries, p.scale_sizes, seed=p.seed, ef_search=p.ef_search,
                                                      ef_construction=EF_CONSTRUCTION, folder=ch.folder)
    for r in rows:
        size = r["chunks"]
        tag = scale_tag(size)
        measured.metric(f"retrieval_p50_ms_{tag}", r["hnsw_p50_ms"], "machine")
        measured.metric(f"retrieval_p95_ms_{tag}", r["hnsw_p95_ms"], "machine")
        measured.metric(f"exact_p50_ms_{tag}", r["exact_p50_ms"], "machine")
        # a mean over queries of the share of the exact top 10 that HNSW finds
        measured.metric(f"hnsw_recall_at_10_{tag}", r["hnsw_recall_at_10"], "mean", n=len(queries))
    for key in ("filler_nn_similarity", "real_nn_similarity"):
        if not math.isnan(filler[key]):
            measured.metric(key, filler[key], "derived", tol=SIMILARITY_TOL)
    return Scale(rows, ef_rows, filler, measured)


@section("scale", figure=True)
def scale_plot(sc: Scale):
    return plots.latency_by_index_size(sc.table)


# ---------------------------------------------------------------------------------------------
# Chunk size and top-k where retrieval is hard: SQuAD articles whole


# R1's arms: the size the claim calls the sweet spot, against one below the 128 where it says chunks
# lose context (declared in data/analysis_plan.yaml, never chosen on results)
SWEET_SPOT, SMALL = 256, 64
R2_MORE, R2_FEWER = 3, 1  # R2's lower end, top-3 against top-1 (top-8 sat near CEILING_BAR on development questions)
SQUAD_COMPARISONS = ("R1-small-chunks", "R1-small-chunks-equal-k", "R1-reader", "R2-top-k", "hybrid-vs-dense")
CEILING_BAR = 0.9  # a budget is usable when every compared arm stays below this on development questions


def squad_hit(method: str, size: int, k: int) -> str:
    return f"SQuAD {method} {size}-token hit@{k}"


def squad_budget_hit(size: int, budget: int) -> str:
    return f"SQuAD dense {size}-token hit within {budget} tokens"


def squad_reader(size: int, budget: int) -> str:
    return f"SQuAD reader {size}-token within {budget} tokens"


def budget_k(size: int, budget: int) -> int:
    """Chunks of `size` tokens that fit a budget of retrieved tokens (0: not even one)."""
    return budget // size


@dataclass
class Articles:
    table: pd.DataFrame  # chunk size -> chunks, hit@k, hit within each budget, MRR (test questions)
    dev: pd.DataFrame  # the same on development questions (other articles)
    budget: int  # the token budget the comparisons use, chosen on the development questions
    reader: pd.DataFrame  # chunk size -> generated answers at the budget: n, contains, F1, prompt tokens
    measured: Measured = field(default_factory=Measured)  # every size's hits and answers, per question
    unmeasured: dict = field(default_factory=dict)  # comparison id -> why this run cannot judge it

    def glue(self) -> None:
        glue("ceiling_bar", CEILING_BAR)

    def styled(self):
        fmt = {c: "{:.1%}" for c in self.table.columns if c.startswith(("hit", "recall"))}
        return self.table.style.format(fmt | {"mrr": "{:.3f}"}, na_rep="-")


@section("benchmarks", figure=True)
def articles_plot(articles: Articles):
    """Hit rate by chunk size, within the chosen budget and at R2's top-3 (none without SQuAD)."""
    return plots.chunk_size_lines(articles.table, articles.budget, R2_MORE) if len(articles.table) else None


@section("benchmarks")
def articles_reader_styled(articles: Articles):
    """The model's answers at the chosen budget, one row per chunk size."""
    return articles.reader.style.format({"contains": "{:.1%}", "em": "{:.1%}", "f1": "{:.2f}",
                                         "prompt_tokens": "{:.0f}"}, na_rep="-")


@section("benchmarks")
def squad_articles(ch: Chapter) -> Articles:
    """R1 and R2 where retrieval is hard: squad_articles SQuAD dev articles indexed whole (every
    paragraph, so most chunks that compete are about the same subject) at every squad_chunk_sizes;
    a chunk is relevant when it covers a gold answer span. Questions of squad_dev_articles articles
    are development questions: they choose the token budget (the largest of token_budgets at which
    every compared chunk size stays below CEILING_BAR); the other articles' questions are the test
    questions. Sizes are compared at equal k and at an equal budget of retrieved tokens, and the
    model answers n_squad_read test questions at the budget from 64- and 256-token chunks."""
    p, clock, measured = ch.params, ch.clock, Measured()
    try:
        found = benchmarks.load_squad_articles(p.data_dir or None)
    except benchmarks.DataUnavailable as e:
        print(f"SQuAD not available: {e}")
        why = f"SQuAD is not in the data folder ({e})"
        return Articles(pd.DataFrame(), pd.DataFrame(), 0, pd.DataFrame(), measured, dict.fromkeys(SQUAD_COMPARISONS, why))
    if p.squad_articles > len(found) or p.squad_dev_articles >= p.squad_articles:
        raise ValueError(f"squad_articles={p.squad_articles}, squad_dev_articles={p.squad_dev_articles}: the data "
                         f"holds {len(found)} articles, and test questions need at least one article that is not "
                         "a development one")
    rng = np.random.default_rng(p.seed)
    chosen = [found[i] for i in rng.permutation(len(found))[:p.squad_articles]]
    dev = [it for a in chosen[:p.squad_dev_articles] for it in rag.article_items(a)]
    test = [it for a in chosen[p.squad_dev_articles:] for it in rag.article_items(a)]
    test = [test[i] for i in rng.permutation(len(test))[:p.n_squad_questions]]
    sizes = sorted(p.squad_chunk_sizes)
    ks = sorted(set(ch.score_ks) | {R2_MORE, R2_FEWER})
    depth = max(ks + [budget_k(min(sizes), b) for b in p.token_budgets])
    tables, rankings, chunks = {"dev": [], "test": []}, {}, {}
    with clock.stage("squad_articles"):
        encoder = rag.Retriever(None, ch.embed_model)  # query vectors do not depend on the chunking
        vectors = {"dev": encoder.embed([it.question for it in dev]), "test": encoder.embed([it.question for it in test])}
        for size in sizes:
            store = ch.open_store(f"squad-{size}-{ch.run_tag}", size)
            store.ingest(rag.articles(chosen))
            chunks[size] = store.count()
            retriever = rag.Retriever(store, ch.embed_model)
            for name, items in (("dev", dev), ("test", test)):
                ranked = retriever.dense([it.question for it in items], depth, vectors=vectors[name])
                row = {"chunk_size": size, "chunks": chunks[size], **rag.retrieval_scores(items, ranked, ks)}
                for b in p.token_budgets:
                    row[f"hit_within_{b}"] = (hits_share(items, ranked, budget_k(size, b))
                                              if budget_k(size, b) else float("nan"))
                tables[name].append(row)
            rankings[size] = ranked  # the test questions'
            for k in ks:
                measured.record(squad_hit("dense", size, k), hits_at(test, ranked, k))
            for b in p.token_budgets:
                if budget_k(size, b):
                    measured.record(squad_budget_hit(size, b), hits_at(test, ranked, budget_k(size, b)))
            if size == SWEET_SPOT:  # hybrid against dense where the claim's sweet spot is
                hybrid = retriever.hybrid([it.question for it in test], max(ks), vectors=vectors["test"])
                for k in ks:
                    measured.record(squad_hit("hybrid", size, k), hits_at(test, hybrid, k))
        dev_table = pd.DataFrame(tables["dev"]).set_index("chunk_size")
        budget = choose_budget(dev_table, [s for s in (SMALL, SWEET_SPOT) if s in sizes], p.token_budgets)
        reader = read_at_budget(ch, measured, test[:p.n_squad_read], rankings, budget)
    table = pd.DataFrame(tables["test"]).set_index("chunk_size")
    _articles_metrics(ch, measured, chosen, dev, test, table, dev_table, budget, reader)
    return Articles(table, dev_table, budget, reader, measured, _articles_unmeasured(ch, measured, sizes, budget))


def hits_share(items: list, rankings: list, k: int) -> float:
    hits = hits_at(items, rankings, k)
    return sum(hits.values()) / len(hits)


def choose_budget(dev: pd.DataFrame, sizes: list[int], budgets: list[int]) -> int:
    """The largest budget at which every compared size holds at least one chunk and stays below
    CEILING_BAR on development questions; the smallest budget when none does."""
    usable = [b for b in sorted(budgets) if all(budget_k(s, b) and dev.loc[s, f"hit_within_{b}"] < CEILING_BAR
                                                for s in sizes)]
    return usable[-1] if usable else min(budgets)


def read_at_budget(ch: Chapter, measured: Measured, items: list, rankings: dict, budget: int) -> pd.DataFrame:
    """The model answers `items` from the chunks that fit the budget, at R1's two sizes: does a
    small chunk that covers the answer still give the reader enough context? One row per size; the
    small size only where the profile measures R1-reader (its only use), the other feeds the
    real-data table and `squad_rag_f1`."""
    p, rows = ch.params, []
    for size in ((SWEET_SPOT,) if not_here(p, ("R1-reader",)) else (SMALL, SWEET_SPOT)):
        if size not in rankings or not items or not budget_k(size, budget):
            continue
        top = [r[:budget_k(size, budget)] for r in rankings[size][:len(items)]]
        gen, texts = rag.answer_batch(ch.lm, items, top, p.max_new_tokens, p.batch_size, desc=f"SQuAD {size}")
        texts = [rag.strip_citations(a) for a in texts]
        contains, _ = answer_metrics.answer_outcomes(items, texts)
        record(measured, squad_reader(size, budget), contains, generation_tokens(items, top, gen))
        scores = answer_metrics.score_answers(texts, items)
        rows.append({"chunk_size": size, "k": budget_k(size, budget), "n": len(items), "contains": scores["contains"],
                     "f1": scores["f1"], "em": scores["em"], "prompt_tokens": float(np.mean(gen.prompt_tokens))})
    return pd.DataFrame(rows).set_index("chunk_size") if rows else pd.DataFrame()


def _articles_metrics(ch: Chapter, measured: Measured, chosen: list, dev: list, test: list, table: pd.DataFrame,
                      dev_table: pd.DataFrame, budget: int, reader: pd.DataFrame) -> None:
    n = len(test)
    measured.metric("embedder_window_tokens", rag.embedder_window(ch.embed_model), "exact")
    measured.metric("squad_articles", len(chosen), "exact")
    measured.metric("squad_dev_n", len(dev), "exact")
    measured.metric("squad_n", n, "exact")
    measured.metric("squad_budget", budget, "choice")
    for size in table.index:
        measured.metric(f"squad_chunks_{size}", table.loc[size, "chunks"], "exact")
        if budget_k(size, budget):  # a chunk larger than the budget has no hit rate within it
            measured.metric(f"squad_hit_budget_{size}", table.loc[size, f"hit_within_{budget}"], "rate", n=n)
            measured.metric(f"squad_dev_hit_budget_{size}", dev_table.loc[size, f"hit_within_{budget}"], "rate", n=len(dev))
        for k in (R2_FEWER, R2_MORE):
            measured.metric(f"squad_hit{k}_{size}", table.loc[size, f"recall_at_{k}"], "rate", n=n)
    if SWEET_SPOT in table.index:
        measured.metric("squad_recall_at_5", table.loc[SWEET_SPOT, "recall_at_5"], "rate", n=n)
        measured.metric("squad_mrr", table.loc[SWEET_SPOT, "mrr"], "mean", n=n)
    for size in reader.index:
        m = len(reader.loc[size]) and int(reader.loc[size, "n"])
        measured.metric(f"squad_reader_contains_{size}", reader.loc[size, "contains"], "rate", n=m)
        measured.metric(f"squad_reader_f1_{size}", reader.loc[size, "f1"], "mean", n=m)
    if SWEET_SPOT in reader.index:
        measured.metric("squad_rag_f1", reader.loc[SWEET_SPOT, "f1"], "mean", n=int(reader.loc[SWEET_SPOT, "n"]))
        measured.metric("squad_read_n", int(reader.loc[SWEET_SPOT, "n"]), "exact")


def _articles_unmeasured(ch: Chapter, measured: Measured, sizes: list[int], budget: int) -> dict[str, str]:
    """Why this run cannot judge R1 (the sweet spot against a small chunk, at the chosen budget;
    secondary: at equal k and read by the model), R2 (top-3 against top-1 at the sweet spot) or hybrid
    against dense: {comparison id: why}, empty where it judges them all."""
    if not {SMALL, SWEET_SPOT} <= set(sizes):
        return dict.fromkeys(SQUAD_COMPARISONS, f"squad_chunk_sizes {sizes} lack {SMALL} or {SWEET_SPOT}, R1's arms")
    if squad_reader(SWEET_SPOT, budget) in measured.outcomes and squad_reader(SMALL, budget) in measured.outcomes:
        return {}
    return {"R1-reader": elsewhere_label("R1-reader") if not_here(ch.params, ("R1-reader",))
            else "the model answered no SQuAD question (n_squad_read)"}


# ---------------------------------------------------------------------------------------------
# Real data: SQuAD and NaturalQuestions


@dataclass
class RealData:
    table: pd.DataFrame  # one row per data set: retrieval and answer scores
    measured: Measured = field(default_factory=Measured)  # NaturalQuestions' answers

    def styled(self):
        t = self.table
        fmt = {c: "{:.1%}" for c in t.columns if c.startswith("recall") or c in ("em", "contains")}
        return t.style.format(fmt | {"f1": "{:.2f}", "mrr": "{:.3f}"}, na_rep="-")


@section("benchmarks")
def real_data(ch: Chapter, grid: Grid, articles: Articles, ans: Answers) -> RealData:
    """One row per data set: the knowledge base (its grid's chosen size, the answers' scores), SQuAD
    articles (256-token chunks; answers at the chosen budget) and NaturalQuestions-Open read with its
    gold passage."""
    p, rows, measured = ch.params, [], Measured()
    if SWEET_SPOT in articles.table.index:
        t, r = articles.table.loc[SWEET_SPOT], articles.reader
        rows.append({"data": f"SQuAD dev, {articles.measured['squad_articles']} articles whole ({SWEET_SPOT}-token chunks)",
                     "n": articles.measured["squad_n"], **{c: t[c] for c in grid.table.columns if c in t},
                     **({"answered": int(r.loc[SWEET_SPOT, "n"]), "em": r.loc[SWEET_SPOT, "em"],
                         "f1": r.loc[SWEET_SPOT, "f1"], "contains": r.loc[SWEET_SPOT, "contains"]}
                        if SWEET_SPOT in r.index else {})})
    nq_read = ch.nq[:p.n_nq_questions]
    if nq_read:
        gold = [[rag.Hit(x.pid, x.pid, x.title, x.text, 1.0) for x in it.passages] for it in nq_read]
        gen = generate(ch.lm, [rag.rag_messages(it.question, g) for it, g in zip(nq_read, gold)],
                       p.max_new_tokens, p.batch_size, desc="NQ")
        texts = [rag.strip_citations(a) for a in gen.texts]
        scores = answer_metrics.score_answers(texts, nq_read)
        answered, _ = answer_metrics.answer_outcomes(nq_read, texts)
        record(measured, "NQ gold passage", answered, {it.qid: (pt, ct) for it, pt, ct in
                                                  zip(nq_read, gen.prompt_tokens, gen.completion_tokens)})
        n = len(answered)
        measured.metric("nq_gold_em", scores["em"], "rate", n=n)
        measured.metric("nq_gold_f1", scores["f1"], "mean", n=n)
        measured.metric("nq_gold_contains", scores["contains"], "rate", n=n)
        measured.metric("nq_n", n, "exact")
        rows.append({"data": "NaturalQuestions-Open, gold passage", "n": len(nq_read), "answered": len(nq_read),
                     "em": scores["em"], "f1": scores["f1"], "contains": scores["contains"]})
    m = ans.measured
    kb_row = {"data": "knowledge base", "n": len(grid.items), **grid.table.loc[grid.chunk].to_dict(),
              "answered": m["n_answer_questions"], "em": m["rag_em"], "f1": m["rag_f1"],
              "contains": m["rag_contains"]}
    return RealData(pd.DataFrame([kb_row] + rows).set_index("data"), measured)


# ---------------------------------------------------------------------------------------------
# Your own documents


@dataclass
class OwnDocuments:
    corpus: object  # rag.Corpus: the sources indexed and the files skipped, with reasons
    n_chunks: int
    answers: pd.DataFrame  # question, answer, sources
    scores: dict  # empty without a questions file
    n: dict = field(default_factory=dict)  # questions behind each score
    measured: Measured = field(default_factory=Measured)  # the answers' outcomes and scores

    def summary(self) -> str:
        return (f"{len(self.corpus.sources)} documents indexed as {self.n_chunks} chunks; "
                f"{len(self.corpus.skipped)} skipped" + ("" if self.scores else "; no questions file, so no scores"))

    def scores_table(self) -> pd.DataFrame:
        """Each score with its n and, for a rate, its 95 % Wilson interval (F1 and MRR are means)."""
        rows = []
        for key, value in self.scores.items():
            n = self.n.get(key, 0)
            low, high = wilson_interval(value * n, n) if n and key not in ("f1", "mrr") else (float("nan"), float("nan"))
            rows.append({"score": key, "value": value, "95 % interval": "–" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]",
                         "questions": n})
        return pd.DataFrame(rows, columns=["score", "value", "95 % interval", "questions"]).set_index("score")


@dataclass
class OwnInputs:
    corpus: object  # rag.Corpus
    items: list  # QAItems: your questions, or three placeholder questions when there are none
    questions_file: str  # empty when there are none


def read_own_inputs(params) -> OwnInputs:
    """Read and check corpus_dir (default: the sample folder) and questions_file (default: the sample
    questions; none for a corpus_dir without one): errors name the file and line."""
    sample = settings.PROJECT_ROOT / "data"
    folder = params.corpus_dir or str(sample / "sample_docs")
    qfile = params.questions_file or ("" if params.corpus_dir else str(sample / "sample_questions.jsonl"))
    corpus = rag.load_folder(folder, params.max_file_mb)
    documents, skipped = {s.doc_id for s in corpus.sources}, {s.path: s.reason for s in corpus.skipped}
    items = rag.load_questions(qfile, documents, skipped) if qfile else [
        rag.QAItem(f"sample-{i}", f"What does {s.title} say?", ()) for i, s in enumerate(corpus.sources[:3])]
    return OwnInputs(corpus, items, qfile)


@section("own_documents")
def own_documents(ch: Chapter) -> OwnDocuments:
    """Index corpus_dir (default: the sample folder) at own_chunk_size and answer questions_file's
    questions (default: the sample questions; none for a corpus_dir without one) from own_top_k chunks.
    It runs first and needs nothing of the knowledge base's sections."""
    p, k, measured = ch.params, ch.params.own_top_k, Measured()
    corpus, items, qfile = ch.own.corpus, ch.own.items, ch.own.questions_file
    store = ch.open_store("own-documents", p.own_chunk_size)
    store.ingest(corpus.sources, keep={s.path for s in corpus.skipped})
    ranked = rag.Retriever(store, ch.embed_model).search([it.question for it in items], k, p.retrieval)
    gen, texts = rag.answer_batch(ch.lm, items, ranked, p.max_new_tokens, p.batch_size, desc="own documents")
    scores = {}
    if qfile:
        scores = answer_metrics.score_answers(texts, items)
        answerable = [it for it in items if it.kind != "unanswerable"]
        if answerable:
            scores.update(rag.retrieval_scores(items, ranked, [k]))
        answered, refused = answer_metrics.answer_outcomes(items, texts)
        tokens = generation_tokens(items, ranked, gen)
        record(measured, f"own documents top-{k}", answered, tokens)
        record(measured, f"own documents top-{k} refusal", refused, tokens)
        n_a, n_u = len(answerable), len(items) - len(answerable)
        for key, value in scores.items():
            n = n_u if key == "refusal_acc" else n_a
            measured.metric(f"own_{key}", value, "mean" if key in ("f1", "mrr") else "rate", n=n)
    table = pd.DataFrame({"question": [it.question for it in items], "answer": texts,
                          "sources": [", ".join(h.doc_id for h in r) for r in ranked]})
    counts = {key: (n_u if key == "refusal_acc" else n_a) for key in scores} if qfile else {}
    return OwnDocuments(corpus, store.count(), table, scores, counts, measured)


# ---------------------------------------------------------------------------------------------
# Saving


def comparisons(ch: Chapter, outcomes: dict, scored: Scored, articles: Articles) -> dict[str, StatedComparison]:
    """Every comparison the analysis plan declares for this chapter (ragft.results.state_comparisons),
    on the outcomes the sections returned, with the placeholders they measured at (the scored top-ks,
    the reranked top-k, SQuAD's budget), the reasons they cannot judge one, and its arms' labels."""
    unmeasured, choices = {}, {}
    for part, section_, ids in ((scored, "knowledge_base", ("K9-top-k", "R3-rerank")),
                                (articles, "benchmarks", SQUAD_COMPARISONS)):
        if isinstance(part, Skipped):
            unmeasured |= dict.fromkeys(ids, f"the {section_} section is not in this run's sections")
        else:
            unmeasured |= part.unmeasured
    if not isinstance(scored, Skipped):
        choices |= scored.choices
    budget = 0 if isinstance(articles, Skipped) else articles.budget
    choices["budget"] = budget
    fewer, more = choices.get("fewer"), choices.get("more")
    labels = {
        "R1-small-chunks": (f"{SWEET_SPOT}-token chunks within {budget} tokens", f"{SMALL}-token chunks"),
        "R1-small-chunks-equal-k": (f"top-{R2_MORE} of {SWEET_SPOT}-token chunks", f"top-{R2_MORE} of {SMALL}-token chunks"),
        "R1-reader": (f"answers from {SWEET_SPOT}-token chunks", f"from {SMALL}-token chunks"),
        "R2-top-k": (f"hit@{R2_MORE}", f"hit@{R2_FEWER}"),
        "hybrid-vs-dense": (f"hybrid hit@{R2_MORE}", f"dense hit@{R2_MORE}"),
        "K9-top-k": (f"answers at top-{fewer}", f"at top-{more}"),
        "R3-rerank": ("the LL reranker's first chunk", f"the {ch.params.retrieval} ranking's first, on the same questions"),
    }
    return state_comparisons(CHAPTER, outcomes, labels, choices, unmeasured, profile=ch.params.profile)


def finish(ch: Chapter, own: OwnDocuments, index: Index, grid: Grid, methods: Methods, scored: Scored, ans: Answers,
           ref: Refusal, lat: Latency, sc: Scale, articles: Articles, real: RealData) -> Path:
    """The chapter's one recording step: every section's outcomes and metrics with the model size, the
    comparisons the plan declares judged on them, the tables, every metric and sentence glued, and the
    results file written."""
    parts = [x.measured for x in (own, index, grid, methods, scored, ans, ref, lat, sc, articles, real)
             if not isinstance(x, Skipped)]
    records = lambda table: table.reset_index().to_dict("records")  # noqa: E731
    kept = Measured()
    kept.metric("model_params_m", ch.lm.n_params() / 1e6, "exact")
    tables = {}
    if "knowledge_base" in ch.params.sections:
        tables.update(ingest=records(index.table), grid=records(grid.table), methods=records(methods.table),
                      answers=ans.rows, scored=records(scored.table),
                      refusal_detectors=records(pd.concat([scored.detectors, ref.detectors])),
                      refusal=records(ref.sweep), latency=lat.summary)
    if "scale" in ch.params.sections:
        tables.update(scale=sc.rows, ef_search=sc.ef_rows)
    if "benchmarks" in ch.params.sections:
        tables.update(real_data=records(real.table), squad_articles=records(articles.table),
                      squad_development=records(articles.dev), squad_reader=records(articles.reader))
    tables["sections"] = list(ch.params.sections)
    measured = Measured.merged(*parts, kept, Measured(tables=tables))
    stated = comparisons(ch, measured.outcomes, scored, articles)
    glue_metrics(measured.metrics)
    for one in stated.values():
        one.glue()
    return ChapterRun(CHAPTER, ch.params, ch.folder, ch.clock).save(measured, judged_of(stated), lm=ch.lm)


@section("knowledge_base")
def answers_table(ans: Answers) -> pd.DataFrame:
    return report.conditions_table(ans.rows)
