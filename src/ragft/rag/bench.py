"""How retrieval cost grows with the corpus: Chroma's HNSW index beside exact search, same vectors.

Embedding 100 K real chunks would take many times the chapter's budget (the chapter measures the
embedder's throughput), so the corpus is grown with filler vectors: draws from a Gaussian with the mean and covariance of the real chunk and passage
embeddings of the run, normalized. Latency depends on the number and dimension of the vectors and
the index settings, not on what they mean; recall depends on how the vectors spread, and the fitted
Gaussian keeps the real vectors' anisotropy (their dominant directions and spectrum) though not
their clusters. The benchmark reports the fillers' similarity to their nearest real vector beside
the real vectors' own, so a reader can judge how alike they are.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..progress import progress
from .store import ChunkStore


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filler_vectors(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n vectors drawn from a Gaussian with the mean and covariance of the real ones, normalized."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real, dtype=np.float64)
    mean, cov = real.mean(axis=0), np.cov(real, rowvar=False)
    draws = rng.multivariate_normal(mean, cov, size=n, method="eigh").astype(np.float32)
    return normalize_rows(draws)


def exact_top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Brute-force cosine search (rows are unit vectors): the reference HNSW is checked against."""
    scores = matrix @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _time_queries(store: ChunkStore, matrix: np.ndarray, queries: np.ndarray, k: int, desc: str) -> dict:
    hnsw_s, exact_s, recall = [], [], []
    for q in progress(queries, desc=desc):
        t = time.perf_counter()
        got = store.search(q[None, :], k)[0]
        hnsw_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        truth = exact_top_k(matrix, q, k)
        exact_s.append(time.perf_counter() - t)
        recall.append(len({int(h.chunk_id[1:]) for h in got} & set(truth.tolist())) / k)
    (h50, h95), (e50, e95) = percentiles_ms(hnsw_s), percentiles_ms(exact_s)
    return {"hnsw_p50_ms": h50, "hnsw_p95_ms": h95, "exact_p50_ms": e50, "exact_p95_ms": e95,
            f"hnsw_recall_at_{k}": float(np.mean(recall))}


def scale_benchmark(real: np.ndarray, queries: np.ndarray, sizes: list[int], k: int = 10, seed: int = 0,
                    ef_search: list[int] = (100,), ef_construction: int = 100,
                    folder: str | Path | None = None) -> tuple[list[dict], list[dict], dict]:
    """Grow one Chroma collection through `sizes` and, at each size, time every query through HNSW
    (the ChunkStore's own search, documents and metadata included, as in the pipeline) and through
    exact numpy search, and measure HNSW's recall@k against exact. At the largest size, repeat for
    each `ef_search` (the search breadth: recall against time). The first ef_search is the one used
    for the growth rows. Returns (rows by size, rows by ef_search, filler stats)."""
    sizes = sorted(sizes)
    real = normalize_rows(np.asarray(real, dtype=np.float32))
    fillers = filler_vectors(real, max(0, sizes[-1] - len(real)), seed)
    vectors = np.concatenate([real, fillers])[:sizes[-1]]
    sample = fillers[:1000]
    stats = {"real_vectors": len(real),
             "filler_nn_similarity": float((sample @ real.T).max(axis=1).mean()) if len(sample) else float("nan"),
             "real_nn_similarity": float(np.sort(real @ real.T, axis=1)[:, -2].mean()) if len(real) > 1 else float("nan")}
    tmp = Path(tempfile.mkdtemp(dir=folder))
    try:
        store = ChunkStore("scale-benchmark", path=tmp,
                           hnsw={"ef_construction": ef_construction, "ef_search": ef_search[0]})
        rows, done = [], 0
        for size in sizes:
            insert_s = store.add_vectors([f"v{i}" for i in range(done, size)], vectors[done:size])
            done = size
            rows.append({"chunks": size, "insert_s": insert_s,
                         **_time_queries(store, vectors[:size], queries, k, f"{size:,} chunks")})
        sweep = []
        for ef in ef_search:
            # Chroma reads ef_search when it loads the index: change the setting, then reopen
            store.collection.modify(configuration={"hnsw": {"ef_search": ef}})
            store = store.reopen()
            sweep.append({"chunks": done, "ef_search": ef,
                          **_time_queries(store, vectors, queries, k, f"ef_search {ef}")})
        return rows, sweep, stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
