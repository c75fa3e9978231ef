"""Chapter 2, RAG with LlamaIndex and Chroma: every stage of a retrieval pipeline, measured.

Sections, in the order the notebook runs them (order, prompts, batch sizes and seeds are those of
the published numbers, so do not reorder them):

  ingest               one Chroma collection per chunk size; ingestion against the bare embedder
  retrieval_grid       recall@k by chunk size and top-k (dense): picks the chunk size and top-k
  retrieval_methods    dense, BM25, hybrid, and the LM reranker on a subset
  answers              cited answers at each answer top-k; refusals at the chosen top-k
  refusal_threshold    R5's similarity threshold, on near misses and off-topic questions
  latency, scale       stage latencies of live queries; HNSW against exact search as the index grows
  real_data            SQuAD retrieval and answers, NaturalQuestions-Open read with its gold passage
  own_documents        the reader's folder (corpus_dir, questions_file), indexed with the same code

Per-question outcomes (ChapterRun.record), one condition per meaning:

  "<method> <size>-token hit@<k>"       1 when a relevant chunk is in the top k (retrieval)
  "hybrid top-<pool> hit@<k>", "LM rerank of hybrid top-<pool> hit@<k>"   the rerank subset
  "answer top-<k>"                      "contains" of each answerable question, with its tokens
  "answer top-<k> refusal"              1 when an unanswerable question was refused
  "citation top-<k>"                    1 when the answer cites a relevant source (questions whose
                                        relevant chunk was among the sources)
  "SQuAD ...", "NQ gold passage", "own documents ..."   the same on real data and the reader's files
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as answer_metrics
from .. import rag, report
from ..drift import rate_tolerance
from ..generation import Generation, generate, timed
from ..rag import bench, evaluation
from ..results import ChapterRun, StatedComparison, glue
from ..stats import wilson_interval
from .common import start

CHAPTER = "02_rag"
HEADLINE_K = 5  # recall@5 is a headline figure whatever top_ks holds
BEST_K_SHARE = 0.95  # the chosen top-k: the smallest within this share of the best recall
EF_CONSTRUCTION = 100  # Chroma's default HNSW graph-build breadth
REFUSAL_THRESHOLDS = np.round(np.arange(0.20, 0.81, 0.05), 2)
# SQuAD paragraphs are indexed at a fixed chunk size (the published numbers use 256): a paragraph is
# about one chunk, so the knowledge base's best size says nothing about it. A parameter would be better
# (config.RagParams has none yet).
SQUAD_CHUNK_SIZE = 256
# Embeddings in float32: BLAS differences between CPUs move a mean cosine similarity by ~1e-6.
SIMILARITY_TOL = 0.01


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


def record(run: ChapterRun, condition: str, scores: dict, tokens: dict | None = None) -> None:
    """Record a condition's outcomes when it has any (an empty part, e.g. no unanswerable questions,
    is left out), with the tokens of its own questions."""
    if scores:
        run.record(condition, scores, {q: tokens[q] for q in scores} if tokens else None)


def rate(run: ChapterRun, key: str, value: float, n: int):
    """A share of n questions, left out when there were none (NaN is not a number the file keeps)."""
    if n and value is not None and not math.isnan(value):
        run.metric(key, value, "rate", n=n)


@dataclass
class Chapter:
    """The chapter's state: parameters, results file, models, knowledge base, stores, the retrieval
    questions and the choices the retrieval grid makes (chunk size, top-k)."""

    params: object
    run: ChapterRun
    lm: object
    embed_model: object
    kb: object
    pages: list
    where: dict  # Chroma: a local folder or a server
    stores: dict = field(default_factory=dict)  # chunk size -> ChunkStore
    retrievers: dict = field(default_factory=dict)  # chunk size -> Retriever
    items: list = field(default_factory=list)  # the retrieval grid's questions (QAItems)
    query_vectors: np.ndarray | None = None
    best_chunk: int | None = None
    best_k: int | None = None
    nq: list = field(default_factory=list)  # NaturalQuestions-Open, when the data folder has it
    own: "OwnInputs | None" = None  # your documents and questions, read and checked before any model loads

    def open_store(self, name: str, chunk_size: int):
        return rag.ChunkStore(name, embed_model=self.embed_model, chunk_size=chunk_size,
                              chunk_overlap=self.params.chunk_overlap, **self.where)

    @property
    def questions(self) -> list[str]:
        return [it.question for it in self.items]

    @property
    def score_ks(self) -> list[int]:
        return sorted(set(self.params.top_ks) | {HEADLINE_K})

    @property
    def depth(self) -> int:
        return max(self.score_ks)

    @property
    def best(self):
        """The retriever at the chosen chunk size."""
        if self.best_chunk is None:
            raise RuntimeError("run retrieval_grid first: it chooses the chunk size")
        return self.retrievers[self.best_chunk]

    def summary(self) -> str:
        lm = self.lm
        return (f"{lm.name}: {lm.n_params() / 1e6:.0f} M parameters, {lm.dtype}; embedder {self.params.embedder}\n"
                f"knowledge base {self.kb.version}: {len(self.kb.documents)} documents on {len(self.pages)} pages; "
                f"store: {self.where}")


def setup(params) -> Chapter:
    """Seeds and threads; the language model and the embedder; the knowledge base as pages; a fresh
    local Chroma folder (so ingestion is measured from scratch) or the configured server."""
    from .. import settings

    own = read_own_inputs(params)  # a bad file fails here, in seconds, not after the whole chapter
    run, lm, embed_model, kb = start(CHAPTER, params, embedder=True)
    folder = settings.run_dir() / "chroma" / CHAPTER
    shutil.rmtree(folder, ignore_errors=True)
    where = dict(host=params.chroma_host, port=params.chroma_port) if params.chroma_host else dict(path=folder)
    return Chapter(params, run, lm, embed_model, kb, rag.kb_pages(kb, params.docs_per_page), where, own=own)


# ---------------------------------------------------------------------------------------------
# Ingestion


def ingest(ch: Chapter) -> pd.DataFrame:
    """Ingest the pages at every chunk size (twice: the second pass must add nothing) and time the
    bare embedder on the same chunk texts. One row per chunk size."""
    p, run = ch.params, ch.run
    encoder = rag.store.bare_encoder(ch.embed_model)
    encoder.encode(["warm-up"] * 8)  # the first call pays one-off set-up costs
    rows = []
    with run.stage("ingest"):
        for size in p.chunk_sizes:
            ch.stores[size] = ch.open_store(f"kb-{size}", size)
            first, again = ch.stores[size].ingest(ch.pages), ch.stores[size].ingest(ch.pages)
            rows.append({"chunk_size": size, "chunks": ch.stores[size].count(), "ingest_s": first.seconds,
                         "embed_s": first.embed_seconds, "chunks_added_again": again.chunks_added,
                         "docs_unchanged_again": again.docs_unchanged})
    table = pd.DataFrame(rows).set_index("chunk_size")
    texts = [t for size in p.chunk_sizes for t in ch.stores[size].embed_texts(ch.pages)]
    _, encoder_s = timed(lambda: encoder.encode(texts, batch_size=64))
    pipeline = run.metric("ingest_chunks_per_s", table.chunks.sum() / table.ingest_s.sum(), "machine")
    bare = run.metric("embedder_only_chunks_per_s", len(texts) / encoder_s, "machine")
    run.metric("ingest_share_of_embedder", pipeline / bare, "machine")
    return table


# ---------------------------------------------------------------------------------------------
# Chunk size and top-k


@dataclass
class Grid:
    table: pd.DataFrame  # chunk size -> recall@k for every scored k, and MRR
    top_ks: list[int]  # the columns the heat map shows
    stated: list[StatedComparison]

    @property
    def recall_cols(self) -> list[str]:
        return [f"recall_at_{k}" for k in self.top_ks]


def retrieval_grid(ch: Chapter) -> Grid:
    """Dense recall@k at every chunk size; chooses the chunk size (best MRR) and the top-k (the
    smallest within BEST_K_SHARE of the best recall there). States R1 (best size against the largest
    and the smallest) and R2 (the largest top-k against the chosen one)."""
    p, run = ch.params, ch.run
    ch.items = rag.kb_items(ch.kb.sample("single", p.n_retrieval_questions, p.seed))
    ch.retrievers = {size: rag.Retriever(ch.stores[size], ch.embed_model) for size in p.chunk_sizes}
    ch.query_vectors = ch.retrievers[p.chunk_sizes[0]].embed(ch.questions)
    rows = []
    with run.stage("retrieval_grid"):
        for size, retriever in ch.retrievers.items():
            ranked = retriever.dense(ch.questions, ch.depth, vectors=ch.query_vectors)
            rows.append({"chunk_size": size, **rag.retrieval_scores(ch.items, ranked, ch.score_ks)})
            for k in ch.score_ks:
                run.record(retrieval_condition("dense", size, k), hits_at(ch.items, ranked, k))
    table = pd.DataFrame(rows).set_index("chunk_size")
    ch.best_chunk = int(table["mrr"].idxmax())  # the size that ranks the relevant chunk highest
    at_best = table.loc[ch.best_chunk, [f"recall_at_{k}" for k in p.top_ks]]
    ch.best_k = min(k for k in p.top_ks if at_best[f"recall_at_{k}"] >= BEST_K_SHARE * at_best.max())
    n = len(ch.items)
    run.metric("best_chunk_size", ch.best_chunk, "choice")
    run.metric("best_top_k", ch.best_k, "choice")
    run.metric("recall_at_5_best", table.loc[ch.best_chunk, f"recall_at_{HEADLINE_K}"], "rate", n=n)
    run.metric("mrr_best", table.loc[ch.best_chunk, "mrr"], "mean", n=n)
    run.metric("n_retrieval_questions", n, "exact")
    return Grid(table, list(p.top_ks), [*chunk_size_comparisons(ch), top_k_comparison(ch)])


def chunk_size_comparisons(ch: Chapter) -> list[StatedComparison]:
    """R1: recall@5 at the chosen size against the largest size tried (chunks above 1,024 tokens
    dilute) and the smallest (below 128 lose context)."""
    best, out = ch.best_chunk, []
    best_label = f"recall@{HEADLINE_K} at {best} tokens"
    for claim, key, other, side in (("R1-chunk-size", "r1_large", max(ch.params.chunk_sizes), "largest"),
                                    ("R1-small-chunks", "r1_small", min(ch.params.chunk_sizes), "smallest")):
        if other == best:
            out.append(StatedComparison(key, None, missing=f"the chosen size is the {side} one tried ({best} tokens), "
                                                 "so there is nothing to compare it with"))
            continue
        cmp = ch.run.compare(claim, retrieval_condition("dense", best, HEADLINE_K),
                             retrieval_condition("dense", other, HEADLINE_K), expect="greater")
        out.append(StatedComparison(key, cmp, best_label, f"at {other} tokens"))
    return out


def top_k_comparison(ch: Chapter) -> StatedComparison:
    """R2 (retrieve the top 3-8): does the largest top-k tried still find relevant chunks the chosen
    top-k misses? Dense retrieval at the chosen chunk size."""
    ks = sorted(ch.params.top_ks)
    more = ks[-1]
    fewer = ch.best_k if ch.best_k < more else (ks[-2] if len(ks) > 1 else None)
    if fewer is None:
        return StatedComparison("r2_top_k", None, missing=f"only one top-k was tried ({more})")
    size = ch.best_chunk
    cmp = ch.run.compare("R2-top-k", retrieval_condition("dense", size, more),
                         retrieval_condition("dense", size, fewer), expect="greater")
    return StatedComparison("r2_top_k", cmp, f"recall@{more}", f"recall@{fewer}")


def heatmap(grid: Grid):
    import matplotlib.pyplot as plt

    values = grid.table[grid.recall_cols].values
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(grid.top_ks)), [f"top-{k}" for k in grid.top_ks])
    ax.set_yticks(range(len(grid.table)), [f"{s} tokens" for s in grid.table.index])
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.0%}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=9)
    ax.set_title("Recall@k by chunk size (dense retrieval)")
    fig.colorbar(im, ax=ax, label="recall@k")
    return fig


# ---------------------------------------------------------------------------------------------
# Dense, keywords, hybrid, rerank


@dataclass
class Methods:
    table: pd.DataFrame  # method -> n, recall@k, MRR, ms per query
    n_rerank: int
    stated: list[StatedComparison]
    score_ks: list[int]

    def glue(self) -> None:
        glue("n_rerank_questions", self.n_rerank)
        for s in self.stated:
            s.glue()


def retrieval_methods(ch: Chapter) -> Methods:
    """Dense, BM25 and hybrid on every retrieval question at the chosen chunk size, then the LM
    reranker over the hybrid top-rerank_pool of the first n_rerank_questions."""
    p, run, best, size = ch.params, ch.run, ch.best, ch.best_chunk
    rows = []
    for name in ("dense", "bm25", "hybrid"):
        ranked, seconds = timed(lambda: best.search(ch.questions, ch.depth, name, vectors=ch.query_vectors))
        rows.append({"method": name, "n": len(ch.items), **rag.retrieval_scores(ch.items, ranked, ch.score_ks),
                     "ms_per_query": 1000 * seconds / len(ch.items)})
        if name != "dense":  # dense at this size is the grid's, recorded there
            for k in ch.score_ks:
                run.record(retrieval_condition(name, size, k), hits_at(ch.items, ranked, k))
    reranker = rag.LMReranker(ch.lm)
    sub = ch.items[:p.n_rerank_questions]
    with run.stage("rerank"):
        pools = best.hybrid([it.question for it in sub], p.rerank_pool, vectors=ch.query_vectors[:len(sub)])
        reranked, rerank_s = timed(lambda: [reranker.rerank(it.question, pool, p.rerank_pool)
                                            for it, pool in zip(sub, pools)])
    pool_name, rerank_name = f"hybrid top-{p.rerank_pool}", f"LM rerank of hybrid top-{p.rerank_pool}"
    for k in ch.score_ks:
        run.record(f"{pool_name} hit@{k}", hits_at(sub, pools, k))
        run.record(f"{rerank_name} hit@{k}", hits_at(sub, reranked, k))
    rows.append({"method": "hybrid (same questions)", "n": len(sub), **rag.retrieval_scores(sub, pools, ch.score_ks),
                 "ms_per_query": np.nan})
    rows.append({"method": f"hybrid + LM rerank of top-{p.rerank_pool}", "n": len(sub),
                 **rag.retrieval_scores(sub, reranked, ch.score_ks), "ms_per_query": 1000 * rerank_s / len(sub)})
    table = pd.DataFrame(rows).set_index("method")
    n, n_sub = len(ch.items), len(sub)
    for name in ("dense", "bm25", "hybrid"):
        run.metric(f"{name}_recall_at_5", table.loc[name, "recall_at_5"], "rate", n=n)
    if "recall_at_1" in table:
        run.metric("hybrid_recall_at_1", table.loc["hybrid", "recall_at_1"], "rate", n=n)
        run.metric("rerank_recall_at_1", table.iloc[-1]["recall_at_1"], "rate", n=n_sub)
        run.metric("rerank_subset_hybrid_recall_at_1", table.iloc[-2]["recall_at_1"], "rate", n=n_sub)
    run.metric("rerank_recall_at_5", table.iloc[-1]["recall_at_5"], "rate", n=n_sub)
    run.metric("rerank_n", n_sub, "exact")
    run.metric("rerank_ms_per_query", table.iloc[-1]["ms_per_query"], "machine")
    run.metric("hybrid_ms_per_query", table.loc["hybrid", "ms_per_query"], "machine")
    hybrid_cmp = run.compare("hybrid-vs-dense", retrieval_condition("hybrid", size, HEADLINE_K),
                             retrieval_condition("dense", size, HEADLINE_K), expect="greater")
    rerank_cmp = run.compare("R3-rerank", f"{rerank_name} hit@{HEADLINE_K}", f"{pool_name} hit@{HEADLINE_K}",
                             expect="greater")
    return Methods(table, n_sub, [StatedComparison("hybrid_vs_dense", hybrid_cmp, "hybrid recall@5", "dense recall@5"),
                                  StatedComparison("rerank_comparison", rerank_cmp, "reranked recall@5",
                                         "hybrid recall@5 on the same questions")], ch.score_ks)


def methods_styled(methods: Methods):
    fmt = {**{f"recall_at_{k}": "{:.1%}" for k in methods.score_ks}, "mrr": "{:.3f}", "ms_per_query": "{:.1f} ms"}
    return methods.table.style.format(fmt, na_rep="-")


# ---------------------------------------------------------------------------------------------
# Answers with citations


@dataclass
class Answers:
    rows: list[dict]  # ragft.metrics.condition_row, one per answer top-k
    table: pd.DataFrame
    n_unanswerable: int
    stated: StatedComparison

    def glue(self, retrieval: str) -> None:
        glue("retrieval_method", retrieval)
        glue("n_unanswerable_answered", self.n_unanswerable)
        self.stated.glue()


def answers(ch: Chapter) -> Answers:
    """Cited answers at every answer top-k (and the chosen one) with the configured retrieval method;
    the unanswerable questions at the chosen top-k only. States K9: the fewest chunks against the
    most, on the same answerable questions."""
    p, run, best_k = ch.params, ch.run, ch.best_k
    answer_items = ch.items[:p.n_answer_questions]
    unanswerable = rag.kb_items(ch.kb.sample("unanswerable", p.n_unanswerable, p.seed))
    rows, ks = [], sorted(set(p.answer_top_ks) | {best_k})  # the chosen top-k is always answered
    with run.stage("answers"):
        for k in ks:
            asked = answer_items + (unanswerable if k == best_k else [])  # refusals at the chosen top-k only
            ranked = ch.best.search([it.question for it in asked], k, p.retrieval)
            gen, texts = rag.answer_batch(ch.lm, asked, ranked, p.max_new_tokens, p.batch_size, desc=f"top-{k}")
            row = answer_metrics.condition_row(f"top-{k}", gen, asked, p.price_per_mtok, top_k=k,
                                               **rag.retrieval_scores(asked, ranked, [k]),
                                               **rag.citation_scores(asked, ranked, texts))
            row["retrieved_recall"] = row.pop(f"recall_at_{k}")
            rows.append(row)
            tokens = generation_tokens(asked, ranked, gen)
            answered, refused = answer_metrics.answer_outcomes(asked, gen.texts)
            record(run, f"answer top-{k}", answered, tokens)
            record(run, f"answer top-{k} refusal", refused, tokens)
            record(run, f"citation top-{k}", citation_outcomes(asked, ranked, texts))
    table = pd.DataFrame(rows).set_index("condition")
    _answer_metrics(ch, table, len(answer_items), len(unanswerable))
    if len(ks) > 1:
        cmp = run.compare("K9-top-k", f"answer top-{ks[0]}", f"answer top-{ks[-1]}", expect="greater")
        stated = StatedComparison("k9_comparison", cmp, f"answers at top-{ks[0]}", f"at top-{ks[-1]}")
    else:
        stated = StatedComparison("k9_comparison", None, missing=f"only top-{ks[0]} was answered, so there is nothing to compare")
    return Answers(rows, table, len(unanswerable), stated)


def _answer_metrics(ch: Chapter, table: pd.DataFrame, n: int, n_unanswerable: int) -> None:
    run = ch.run
    main = table.loc[f"top-{ch.best_k}"]
    run.metric("rag_contains", main["contains"], "rate", n=n)
    # Wilson bounds move with the rate: one flipped answer moves them by about as much as the rate
    run.metric("rag_contains_lo", main["contains_lo"], "derived", tol=rate_tolerance(n))
    run.metric("rag_contains_hi", main["contains_hi"], "derived", tol=rate_tolerance(n))
    run.metric("rag_em", main["em"], "rate", n=n)
    run.metric("rag_f1", main["f1"], "mean", n=n)
    rate(run, "rag_refusal_acc", main.get("refusal_acc", np.nan), n_unanswerable)
    run.metric("rag_false_refusal", main["false_refusal"], "rate", n=n)
    rate(run, "citation_accuracy", main["citation_accuracy"], int(main["citation_n"]))
    run.metric("citation_rate", main["citation_rate"], "rate", n=int(main["n"]))
    run.metric("rag_prompt_tokens", main["prompt_tokens"], "exact")
    run.metric("rag_cost_per_1k_usd", main["cost_per_1k_usd"], "exact")
    run.metric("n_answer_questions", n, "exact")
    run.metric("rag_contains_n", n, "exact")
    run.metric("rag_refusal_n", n_unanswerable, "exact")
    run.metric("citation_n", int(main["citation_n"]), "exact")
    for k, row in table.set_index("top_k").iterrows():
        run.metric(f"contains_top{k}", row["contains"], "rate", n=n)
        run.metric(f"prompt_tokens_top{k}", row["prompt_tokens"], "exact")


def context_plot(ans: Answers):
    import matplotlib.pyplot as plt

    t = ans.table.sort_values("prompt_tokens")
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot(t.prompt_tokens, t.contains, "o-", label="answer contains gold")
    ax.plot(t.prompt_tokens, t.retrieved_recall, "s--", label="relevant chunk retrieved")
    for _, r in t.iterrows():
        ax.annotate(f"top-{r.top_k}", (r.prompt_tokens, r.contains), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax2 = ax.twinx()
    ax2.bar(t.prompt_tokens, t.latency_s, width=t.prompt_tokens.max() / 25, alpha=0.25, color="grey")
    ax2.set_ylabel("seconds per query (grey)")
    ax.set(xlabel="prompt tokens per query", ylabel="share of questions", ylim=(0, 1.05),
           title="Answers and retrieval as the context grows")
    ax.legend(loc="lower right", fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# Refusing under a similarity threshold (R5)


@dataclass
class Refusal:
    """R5 has no paired comparison here (a threshold trades refusals of unanswerable questions for
    refusals of answerable ones): it is reported as rates with Wilson intervals."""

    sweep: pd.DataFrame  # threshold -> refusal precision, recall, F1, answerable refused (near misses)
    offtopic: pd.DataFrame | None  # the same for off-topic questions, when NQ is available
    n_answerable: int
    n_near_miss: int

    def glue(self, run: ChapterRun) -> None:
        m = run.metrics
        for key, n in (("refusal_recall_at_best", self.n_near_miss), ("answerable_refused_at_best", self.n_answerable)):
            lo, hi = wilson_interval(m[key] * n, n)
            glue(f"{key}_lo", lo)
            glue(f"{key}_hi", hi)
        glue("n_near_miss", self.n_near_miss)
        glue("offtopic_sentence", f"For off-topic questions the best threshold reaches an F1 of "
             f"{m['offtopic_refusal_f1_best']:.2f}." if self.offtopic is not None else
             "The off-topic questions need NaturalQuestions-Open in the data folder; it is absent in this run.")


def refusal_threshold(ch: Chapter) -> Refusal:
    """Refuse whenever the best dense similarity is under a threshold: a sweep over thresholds for the
    knowledge base's unanswerable questions (near misses) and, when the data folder has them,
    off-topic NaturalQuestions (loaded here; the real-data section reads them too)."""
    from ..corpus import benchmarks

    run, best = ch.run, ch.best

    def top_similarity(qs):
        return [h[0].score if h else 0.0 for h in best.dense(qs, 1)]

    answerable_sim = top_similarity(ch.questions)
    near_miss = rag.kb_items(ch.kb.by_kind("unanswerable"))
    near_sim = top_similarity([it.question for it in near_miss])
    try:
        ch.nq = benchmarks.load_nq_open(ch.params.data_dir or None)
    except benchmarks.DataUnavailable as e:
        ch.nq = []
        print(f"NaturalQuestions-Open not available: {e}")
    sweep = pd.DataFrame(evaluation.refusal_sweep(answerable_sim, near_sim, REFUSAL_THRESHOLDS)).set_index("threshold")
    best_t = sweep.refusal_f1.idxmax()
    n_a, n_u = len(ch.items), len(near_miss)
    f1_tol = rate_tolerance(n_a) + rate_tolerance(n_u)  # F1 of refusals moves with its two rates
    run.metric("refusal_f1_best", sweep.refusal_f1.max(), "derived", tol=f1_tol)
    run.metric("refusal_threshold_best", best_t, "choice")
    run.metric("refusal_recall_at_best", sweep.loc[best_t, "refusal_recall"], "rate", n=n_u)
    run.metric("answerable_refused_at_best", sweep.loc[best_t, "answerable_refused"], "rate", n=n_a)
    run.metric("refusal_near_miss_n", n_u, "exact")
    offtopic = None
    if ch.nq:
        offtopic_sim = top_similarity([it.question for it in ch.nq[:n_u]])
        offtopic = pd.DataFrame(evaluation.refusal_sweep(answerable_sim, offtopic_sim, REFUSAL_THRESHOLDS)).set_index("threshold")
        run.metric("offtopic_refusal_f1_best", offtopic.refusal_f1.max(), "derived",
                   tol=rate_tolerance(n_a) + rate_tolerance(len(offtopic_sim)))
    return Refusal(sweep, offtopic, n_a, n_u)


def refusal_plot(ref: Refusal):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot(ref.sweep.index, ref.sweep.refusal_recall, "o-", label="near-miss questions refused")
    ax.plot(ref.sweep.index, ref.sweep.answerable_refused, "s-", label="answerable questions refused")
    if ref.offtopic is not None:
        ax.plot(ref.offtopic.index, ref.offtopic.refusal_recall, "^-", label="off-topic questions refused")
    ax.set(xlabel="similarity threshold", ylabel="share refused", title="Refusing under a similarity threshold")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# Where the time goes


@dataclass
class Latency:
    summary: dict  # stage -> {"p50", "p95"} in ms
    n: int

    @property
    def table(self) -> pd.DataFrame:
        out = pd.DataFrame(self.summary).T.rename(columns={"p50": "measured p50 (ms)", "p95": "measured p95 (ms)"})
        out["S2 quoted (ms)"] = [evaluation.S2_CLAIMED_MS.get(s, np.nan) for s in out.index]
        return out

    def glue(self) -> None:
        glue("n_latency_queries", self.n)
        glue("lookup_p50_ms", self.summary["embed_ms"]["p50"] + self.summary["search_ms"]["p50"])


def latency(ch: Chapter) -> Latency:
    """n_latency_queries questions answered one at a time, as a service would, each stage timed."""
    run, times = ch.run, []
    with run.stage("latency"):
        for it in ch.items[:ch.params.n_latency_queries]:
            _, _, t = rag.answer_live(it.question, ch.best, ch.lm, ch.best_k, max_new_tokens=ch.params.max_new_tokens)
            times.append(t)
    lat = evaluation.latency_summary(times)
    for key, stage in (("ttft_p50_ms", "ttft_ms"), ("embed_p50_ms", "embed_ms"), ("search_p50_ms", "search_ms"),
                       ("to_first_token_p50_ms", "to_first_token_ms"), ("total_p50_ms", "total_ms")):
        run.metric(key, lat[stage]["p50"], "machine")
    run.metric("retrieval_share_of_first_token",
               (lat["embed_ms"]["p50"] + lat["search_ms"]["p50"]) / lat["to_first_token_ms"]["p50"], "machine")
    return Latency(lat, len(times))


# ---------------------------------------------------------------------------------------------
# Scale: HNSW against exact search


@dataclass
class Scale:
    rows: list[dict]  # by index size
    ef_rows: list[dict]  # by ef_search, at the largest size
    filler: dict

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


def scale(ch: Chapter) -> Scale:
    """Grow one collection through scale_sizes (real chunk vectors, then Gaussian fillers with their
    mean and covariance) and time HNSW against exact search at each size (ragft.rag.bench)."""
    from .. import settings

    p, run = ch.params, ch.run
    real = np.concatenate([np.asarray(s.collection.get(include=["embeddings"])["embeddings"]) for s in ch.stores.values()])
    queries = ch.query_vectors[:p.n_scale_queries]
    with run.stage("scale"):
        rows, ef_rows, filler = bench.scale_benchmark(real, queries, p.scale_sizes, seed=p.seed, ef_search=p.ef_search,
                                                      ef_construction=EF_CONSTRUCTION, folder=settings.run_dir())
    for r in rows:
        size = r["chunks"]
        tag = f"{size // 1000}k" if size >= 1000 else str(size)
        run.metric(f"retrieval_p50_ms_{tag}", r["hnsw_p50_ms"], "machine")
        run.metric(f"retrieval_p95_ms_{tag}", r["hnsw_p95_ms"], "machine")
        run.metric(f"exact_p50_ms_{tag}", r["exact_p50_ms"], "machine")
        # a mean over queries of the share of the exact top 10 that HNSW finds
        run.metric(f"hnsw_recall_at_10_{tag}", r["hnsw_recall_at_10"], "mean", n=len(queries))
    for key in ("filler_nn_similarity", "real_nn_similarity"):
        if not math.isnan(filler[key]):
            run.metric(key, filler[key], "derived", tol=SIMILARITY_TOL)
    return Scale(rows, ef_rows, filler)


def scale_plot(sc: Scale):
    import matplotlib.pyplot as plt

    t = sc.table
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot(t.index, t.hnsw_p50_ms, "o-", label="Chroma HNSW, p50")
    ax.plot(t.index, t.exact_p50_ms, "s-", label="exact numpy search, p50")
    ax.set(xscale="log", xlabel="chunks in the index", ylabel="ms per query", title="Retrieval latency as the corpus grows")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# Real data: SQuAD and NaturalQuestions


@dataclass
class RealData:
    table: pd.DataFrame  # one row per data set: retrieval and answer scores
    squad: bool  # SQuAD was available

    def glue(self, run: ChapterRun) -> None:
        m = run.metrics
        glue("real_data_sentence", (f"On SQuAD, recall@5 is {m['squad_recall_at_5']:.1%} over {m['squad_paragraphs']:,} "
                                    f"real paragraphs and RAG answers reach a token F1 of {m['squad_rag_f1']:.2f}.")
             if self.squad else "SQuAD is not in the data folder in this run, so only the knowledge-base figures are shown.")

    def styled(self):
        t = self.table
        fmt = {c: "{:.1%}" for c in t.columns if c.startswith("recall") or c in ("em", "contains")}
        return t.style.format(fmt | {"f1": "{:.2f}", "mrr": "{:.3f}"}, na_rep="-")


def real_data(ch: Chapter, grid: Grid) -> RealData:
    """SQuAD dev: every kept paragraph indexed, retrieval on n_squad_questions, the first
    n_answer_questions answered at the chosen top-k; NaturalQuestions-Open read with its gold passage."""
    p, run = ch.params, ch.run
    squad_row = _squad(ch)
    rows = [squad_row] if squad_row else []
    nq_read = ch.nq[:p.n_nq_questions]
    if nq_read:
        gold = [[rag.Hit(x.pid, x.pid, x.title, x.text, 1.0) for x in it.passages] for it in nq_read]
        gen = generate(ch.lm, [rag.rag_messages(it.question, g) for it, g in zip(nq_read, gold)],
                       p.max_new_tokens, p.batch_size, desc="NQ")
        texts = [rag.strip_citations(a) for a in gen.texts]
        scores = answer_metrics.score_answers(texts, nq_read)
        answered, _ = answer_metrics.answer_outcomes(nq_read, texts)
        record(run, "NQ gold passage", answered, {it.qid: (pt, ct) for it, pt, ct in
                                                  zip(nq_read, gen.prompt_tokens, gen.completion_tokens)})
        n = len(answered)
        run.metric("nq_gold_em", scores["em"], "rate", n=n)
        run.metric("nq_gold_f1", scores["f1"], "mean", n=n)
        run.metric("nq_gold_contains", scores["contains"], "rate", n=n)
        run.metric("nq_n", n, "exact")
        rows.append({"data": "NaturalQuestions-Open, gold passage", "n": len(nq_read), "answered": len(nq_read),
                     "em": scores["em"], "f1": scores["f1"], "contains": scores["contains"]})
    m = run.metrics
    kb_row = {"data": "knowledge base", "n": len(ch.items), **grid.table.loc[ch.best_chunk].to_dict(),
              "answered": m["n_answer_questions"], "em": m["rag_em"], "f1": m["rag_f1"],
              "contains": m["rag_contains"]}
    return RealData(pd.DataFrame([kb_row] + rows).set_index("data"), squad_row is not None)


def _squad(ch: Chapter) -> dict | None:
    """SQuAD's retrieval and answer row, or None (with the reason printed) when the data is absent."""
    from ..corpus import benchmarks

    p, run = ch.params, ch.run
    try:
        squad_items, squad_corpus = benchmarks.load_squad(p.data_dir or None)
    except benchmarks.DataUnavailable as e:
        print(f"SQuAD not available: {e}")
        return None
    corpus = squad_corpus[:p.squad_paragraphs or None]
    kept = {x.pid for x in corpus}
    sq = rag.benchmark_items([it for it in squad_items if it.gold_pids <= kept])
    sq = [sq[i] for i in np.random.default_rng(p.seed).permutation(len(sq))[:p.n_squad_questions]]
    with run.stage("squad"):
        store = ch.open_store("squad", SQUAD_CHUNK_SIZE)
        store.ingest(rag.sources.passages(corpus))
        ranked = rag.Retriever(store, ch.embed_model).search([it.question for it in sq], ch.depth, p.retrieval)
        scores = rag.retrieval_scores(sq, ranked, ch.score_ks)
        read = sq[:p.n_answer_questions]
        top = [r[:ch.best_k] for r in ranked[:len(read)]]
        gen, texts = rag.answer_batch(ch.lm, read, top, p.max_new_tokens, p.batch_size, desc="SQuAD")
        texts = [rag.strip_citations(a) for a in texts]
        answered = answer_metrics.score_answers(texts, read)
    for k in ch.score_ks:
        run.record(f"SQuAD {p.retrieval} hit@{k}", hits_at(sq, ranked, k))
    contains, _ = answer_metrics.answer_outcomes(read, texts)
    record(run, f"SQuAD answer top-{ch.best_k}", contains, generation_tokens(read, top, gen))
    n, n_read = len(sq), len(contains)
    run.metric("squad_paragraphs", len(corpus), "exact")
    run.metric("squad_recall_at_5", scores["recall_at_5"], "rate", n=n)
    run.metric("squad_mrr", scores["mrr"], "mean", n=n)
    run.metric("squad_rag_em", answered["em"], "rate", n=n_read)
    run.metric("squad_rag_f1", answered["f1"], "mean", n=n_read)
    run.metric("squad_rag_contains", answered["contains"], "rate", n=n_read)
    run.metric("squad_n", n, "exact")
    run.metric("squad_answered_n", n_read, "exact")
    return {"data": f"SQuAD dev ({len(corpus):,} paragraphs)", "n": n, **scores, "answered": len(read),
            "em": answered["em"], "f1": answered["f1"], "contains": answered["contains"]}


# ---------------------------------------------------------------------------------------------
# Your own documents


@dataclass
class OwnDocuments:
    corpus: object  # rag.Corpus: the sources indexed and the files skipped, with reasons
    n_chunks: int
    answers: pd.DataFrame  # question, answer, sources
    scores: dict  # empty without a questions file

    def summary(self) -> str:
        scored = "; " + ", ".join(f"{k} {v:.3f}" for k, v in self.scores.items()) if self.scores else ""
        return (f"{len(self.corpus.sources)} documents indexed as {self.n_chunks} chunks; "
                f"{len(self.corpus.skipped)} skipped{scored}")


@dataclass
class OwnInputs:
    corpus: object  # rag.Corpus
    items: list  # QAItems: your questions, or three placeholder questions when there are none
    questions_file: str  # empty when there are none


def read_own_inputs(params) -> OwnInputs:
    """Read and check corpus_dir (default: the sample folder) and questions_file (default: the sample
    questions; none for a corpus_dir without one): errors name the file and line."""
    from .. import settings

    sample = settings.PROJECT_ROOT / "data"
    folder = params.corpus_dir or str(sample / "sample_docs")
    qfile = params.questions_file or ("" if params.corpus_dir else str(sample / "sample_questions.jsonl"))
    corpus = rag.load_folder(folder, params.max_file_mb)
    items = rag.load_questions(qfile) if qfile else [rag.QAItem(f"sample-{i}", f"What does {s.title} say?", ())
                                                     for i, s in enumerate(corpus.sources[:3])]
    return OwnInputs(corpus, items, qfile)


def own_documents(ch: Chapter) -> OwnDocuments:
    """Index corpus_dir (default: the sample folder) at the chosen chunk size and answer
    questions_file's questions (default: the sample questions; none for a corpus_dir without one)."""
    p, run, k = ch.params, ch.run, ch.best_k
    corpus, items, qfile = ch.own.corpus, ch.own.items, ch.own.questions_file
    store = ch.open_store("own-documents", ch.best_chunk)
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
        record(run, f"own documents top-{k}", answered, tokens)
        record(run, f"own documents top-{k} refusal", refused, tokens)
        n_a, n_u = len(answerable), len(items) - len(answerable)
        for key, value in scores.items():
            n = n_u if key == "refusal_acc" else n_a
            run.metric(f"own_{key}", value, "mean" if key in ("f1", "mrr") else "rate", n=n)
    table = pd.DataFrame({"question": [it.question for it in items], "answer": texts,
                          "sources": [", ".join(h.doc_id for h in r) for r in ranked]})
    return OwnDocuments(corpus, store.count(), table, scores)


# ---------------------------------------------------------------------------------------------
# Saving


def finish(ch: Chapter, ingest_table: pd.DataFrame, grid: Grid, methods: Methods, ans: Answers, ref: Refusal,
           lat: Latency, sc: Scale, real: RealData):
    """The model size, the tables, every metric glued, and the results file written."""
    from ..results import glue_metrics

    run = ch.run
    run.metric("model_params_m", ch.lm.n_params() / 1e6, "exact")
    run.tables.update(ingest=ingest_table.reset_index().to_dict("records"), grid=grid.table.reset_index().to_dict("records"),
                      methods=methods.table.reset_index().to_dict("records"), answers=ans.rows,
                      refusal=ref.sweep.reset_index().to_dict("records"), latency=lat.summary, scale=sc.rows,
                      ef_search=sc.ef_rows, real_data=real.table.reset_index().to_dict("records"))
    glue_metrics(run.metrics)
    return run.save(lm=ch.lm)


def answers_table(ans: Answers) -> pd.DataFrame:
    return report.conditions_table(ans.rows)
