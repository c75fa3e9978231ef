"""Answering from retrieved chunks, with numbered sources the answer must cite; one live query
timed stage by stage, the way a deployed service answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..constants import REFUSAL_ANSWER
from ..generation import generate, generate_streamed
from ..metrics import CITATION, strip_citations
from ..prompts import CITE_SYSTEM, build_messages
from .retrieve import Retriever, above_threshold
from .sources import QAItem
from .store import Hit


def cited_messages(question: str, passages: list[str]) -> list[dict]:
    """The cited-answer prompt over passage texts (numbered sources)."""
    return build_messages(question, system=CITE_SYSTEM, passages=passages, numbered=True)


def rag_messages(question: str, hits: list[Hit]) -> list[dict]:
    return cited_messages(question, [h.text for h in hits])


def parse_citations(answer: str, n_sources: int) -> list[int]:
    """Source numbers cited as [2] or [1, 3], in order, valid ones only (1-based)."""
    cited = []
    for group in CITATION.findall(answer):
        for n in (int(x) for x in group.split(",")):
            if 1 <= n <= n_sources and n not in cited:
                cited.append(n)
    return cited


def answer_batch(lm, items: list[QAItem], rankings: list[list[Hit]], max_new_tokens: int = 32,
                 batch_size: int = 16, desc: str = "answering"):
    """Answers for many questions at once. A question whose ranking is empty (refused by the
    threshold) gets the refusal without a model call. Returns (Generation, answers)."""
    asked = [i for i, hits in enumerate(rankings) if hits]
    gen = generate(lm, [rag_messages(items[i].question, rankings[i]) for i in asked], max_new_tokens,
                   batch_size, desc=desc)
    answers = [REFUSAL_ANSWER] * len(items)
    for j, i in enumerate(asked):
        answers[i] = gen.texts[j]
    return gen, answers


# ---------------------------------------------------------------------------------------------
# One live query, stage by stage


@dataclass
class StageTimes:
    embed_ms: float
    search_ms: float
    rerank_ms: float
    prompt_ms: float
    ttft_ms: float  # model prefill + first token
    total_ms: float  # question in -> full answer out

    @property
    def to_first_token_ms(self) -> float:
        return self.embed_ms + self.search_ms + self.rerank_ms + self.prompt_ms + self.ttft_ms


def answer_live(question: str, retriever: Retriever, lm, k: int, reranker=None, pool: int | None = None,
                threshold: float | None = None, max_new_tokens: int = 32) -> tuple[str, list[Hit], StageTimes]:
    """Answer one question the way a deployed RAG service would, timing each stage."""
    t0 = time.perf_counter()
    vector = np.asarray([retriever.embed_model.get_query_embedding(question)], dtype=np.float32)
    t1 = time.perf_counter()
    hits = retriever.dense([question], pool or k, vectors=vector)[0]
    if threshold is not None:
        hits = above_threshold(hits, threshold)
    t2 = time.perf_counter()
    hits = reranker.rerank(question, hits, k) if reranker is not None and hits else hits[:k]
    t3 = time.perf_counter()
    if not hits:
        ms = [(b - a) * 1000 for a, b in ((t0, t1), (t1, t2), (t2, t3))]
        return REFUSAL_ANSWER, hits, StageTimes(*ms, 0.0, 0.0, (time.perf_counter() - t0) * 1000)
    messages = rag_messages(question, hits)
    t4 = time.perf_counter()
    answer, _, ttft, gen_s = generate_streamed(lm, messages, max_new_tokens)
    ms = [(b - a) * 1000 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]
    return answer, hits, StageTimes(*ms, ttft * 1000, (t4 - t0 + gen_s) * 1000)
