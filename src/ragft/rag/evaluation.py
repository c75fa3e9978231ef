"""Measuring a RAG system: retrieval quality, citations, refusal thresholds, stage latency."""

from __future__ import annotations

import numpy as np

from .answer import parse_citations
from .sources import QAItem
from .store import Hit

# S2's stage latencies in milliseconds ([E], CLAIMS.md), quoted beside the measured ones.
S2_CLAIMED_MS = {"embed_ms": 60, "search_ms": 40, "rerank_ms": 180, "ttft_ms": 420, "to_first_token_ms": 700}


def citation_scores(items: list[QAItem], rankings: list[list[Hit]], answers: list[str]) -> dict[str, float]:
    """citation_rate: answers that cite a valid source; citation_accuracy: of the answerable questions
    whose relevant chunk was among the sources, the share whose answer cites a relevant source."""
    cites, correct, eligible = 0, 0, 0
    for item, hits, answer in zip(items, rankings, answers):
        cited = parse_citations(answer, len(hits))
        cites += bool(cited)
        relevant = {n for n, h in enumerate(hits, 1) if item.is_relevant(h.doc_id, h.text)}
        if item.kind != "unanswerable" and relevant:
            eligible += 1
            correct += bool(relevant & set(cited))
    return {"citation_rate": cites / max(1, len(items)),
            "citation_accuracy": correct / eligible if eligible else float("nan"), "citation_n": eligible}


def first_relevant_rank(item: QAItem, hits: list[Hit]) -> int | None:
    for rank, h in enumerate(hits, 1):
        if item.is_relevant(h.doc_id, h.text):
            return rank
    return None


def retrieval_scores(items: list[QAItem], rankings: list[list[Hit]], ks=(1, 3, 5, 8)) -> dict[str, float]:
    """recall@k (a relevant chunk within the top k: one gold fact per question, so recall is the hit
    rate) and MRR, over the answerable items."""
    ranks = [first_relevant_rank(it, hits) for it, hits in zip(items, rankings) if it.kind != "unanswerable"]
    if not ranks:
        raise ValueError("retrieval scores need answerable questions")
    out = {f"recall_at_{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks if r) / len(ranks)
    return out




def refusal_sweep(answerable: list[float], unanswerable: list[float], thresholds) -> list[dict]:
    """Refusing whenever the best dense similarity is under a threshold, for each threshold:
    precision and recall of the refusals (unanswerable questions are the positives), the share of
    answerable questions wrongly refused, and Youden's J (recall minus that share: 0 for refusing
    everything or nothing, whatever the mix of questions, where F1 can peak at refusing everything)."""
    a, u = np.asarray(answerable), np.asarray(unanswerable)
    rows = []
    for t in thresholds:
        tp, fp = int((u < t).sum()), int((a < t).sum())
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / len(u) if len(u) else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        rows.append({"threshold": float(t), "refusal_precision": precision, "refusal_recall": recall,
                     "refusal_f1": f1, "answerable_refused": fp / len(a) if len(a) else float("nan"),
                     "refusal_j": recall - fp / len(a) if len(a) and len(u) else float("nan")})
    return rows


def threshold_for_false_refusals(answerable: list[float], thresholds, max_share: float) -> float:
    """The refusal threshold chosen without unanswerable questions: the highest of `thresholds` under
    which at most `max_share` of these answerable questions' similarities fall (refusing means a
    similarity under the threshold), else the lowest threshold. Hand it development questions: the
    rates it gives on test questions are then not tuned on them."""
    a = np.asarray(answerable, dtype=float)
    if not len(a):
        raise ValueError("a refusal threshold needs answerable development questions")
    kept = [float(t) for t in sorted(thresholds) if (a < t).mean() <= max_share]
    return kept[-1] if kept else float(min(thresholds))


def latency_summary(times: list) -> dict[str, dict[str, float]]:
    """p50 and p95 of each stage over a list of StageTimes."""
    stages = ["embed_ms", "search_ms", "rerank_ms", "prompt_ms", "ttft_ms", "to_first_token_ms", "total_ms"]
    out = {}
    for stage in stages:
        values = np.asarray([getattr(t, stage) for t in times])
        out[stage] = {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}
    return out
