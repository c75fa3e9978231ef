"""Retrieval over a ChunkStore: dense, BM25 keywords, their reciprocal-rank fusion, a similarity
threshold for "no relevant information". (Reranking is scored in chapter 2 by the LM's log-likelihood of
each numbered source, in the same prefill that scores the answer: ragft.experiments.ch02_rag.)

Every method takes a batch of questions and returns, per question, a list of Hits best first, so
the chapter's experiments and a single live query use the same code.
"""

from __future__ import annotations

import numpy as np

from .store import ChunkStore, Hit, bare_encoder

RRF_K = 60  # the constant of Cormack et al. (2009); ranks matter, raw scores of the two systems do not


class Retriever:
    def __init__(self, store: ChunkStore, embed_model):
        self.store, self.embed_model = store, embed_model
        self._bm25 = None

    # -- dense ----------------------------------------------------------------------------------

    def embed(self, questions: list[str]) -> np.ndarray:
        """Query vectors for a batch (a single live query goes through embed_model.get_query_embedding)."""
        return bare_encoder(self.embed_model).encode(questions, batch_size=64, normalize_embeddings=True,
                                                     convert_to_numpy=True)

    def dense(self, questions: list[str], k: int, where: dict | None = None, vectors=None) -> list[list[Hit]]:
        vectors = self.embed(questions) if vectors is None else vectors
        return self.store.search(vectors, k, where)

    # -- keywords -------------------------------------------------------------------------------

    def _keyword_index(self):
        """BM25 over every chunk in the store, built on first use (rebuild the Retriever after ingesting)."""
        if self._bm25 is None:
            import bm25s
            from bm25s.tokenization import Tokenizer

            chunks = self.store.all_chunks()
            if not chunks:
                raise ValueError("the store is empty: ingest documents before searching")
            tokenizer = Tokenizer(stopwords="en")
            index = bm25s.BM25()
            index.index(tokenizer.tokenize([c.text for c in chunks], return_as="ids", show_progress=False),
                        show_progress=False)
            self._bm25 = (tokenizer, index, chunks)
        return self._bm25

    def keyword(self, questions: list[str], k: int) -> list[list[Hit]]:
        tokenizer, index, chunks = self._keyword_index()
        ids = tokenizer.tokenize(questions, return_as="ids", update_vocab=False, show_progress=False)
        rows, scores = index.retrieve(ids, k=min(k, len(chunks)), show_progress=False, n_threads=1)
        return [[Hit(**{**vars(chunks[i]), "score": float(s)}) for i, s in zip(r, sc) if s > 0]
                for r, sc in zip(rows, scores)]

    # -- fusion ---------------------------------------------------------------------------------

    def hybrid(self, questions: list[str], k: int, pool: int = 20, vectors=None) -> list[list[Hit]]:
        """Reciprocal-rank fusion of the dense and BM25 top-`pool` lists (at least k deep, so a top-k
        above the pool is what was asked for, not the pool cut short)."""
        pool = max(pool, k)
        dense = self.dense(questions, pool, vectors=vectors)
        keyword = self.keyword(questions, pool)
        return [fuse([d, kw])[:k] for d, kw in zip(dense, keyword)]


    def search(self, questions: list[str], k: int, method: str = "hybrid", vectors=None) -> list[list[Hit]]:
        """Top-k chunks per question by `method`: dense | bm25 | hybrid."""
        if method == "dense":
            return self.dense(questions, k, vectors=vectors)
        if method == "bm25":
            return self.keyword(questions, k)
        if method == "hybrid":
            return self.hybrid(questions, k, vectors=vectors)
        raise ValueError(f"retrieval method {method!r}: use dense, bm25 or hybrid")


def fuse(rankings: list[list[Hit]], rrf_k: int = RRF_K) -> list[Hit]:
    """Reciprocal-rank fusion: each list gives 1 / (rrf_k + rank) to its hits."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda cid: (-scores[cid], cid))
    return [Hit(**{**vars(first[cid]), "score": scores[cid]}) for cid in order]


def above_threshold(hits: list[Hit], threshold: float) -> list[Hit]:
    """The hits, or none when even the best dense similarity is under the threshold: the caller then
    answers that it has no relevant information instead of asking the model."""
    return hits if hits and hits[0].score >= threshold else []
