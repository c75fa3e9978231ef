"""The chapters' figures, one home for all of them: each takes plain tables (the rows the results file
stores) and returns a matplotlib figure; the chapters decide what to plot, never how."""

from __future__ import annotations

import numpy as np
import pandas as pd

WIDE = (6.5, 3.2)  # one figure size for the book's line and bar plots


def recall_heatmap(table: pd.DataFrame, top_ks: list[int]):
    """Recall@k by chunk size (rows) and top-k (columns): `table` has recall_at_<k> columns."""
    import matplotlib.pyplot as plt

    values = table[[f"recall_at_{k}" for k in top_ks]].values
    fig, ax = plt.subplots(figsize=WIDE)
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(top_ks)), [f"top-{k}" for k in top_ks])
    ax.set_yticks(range(len(table)), [f"{s} tokens" for s in table.index])
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.0%}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=9)
    ax.set_title("Recall@k by chunk size (dense retrieval)")
    fig.colorbar(im, ax=ax, label="recall@k")
    return fig


def chunk_size_lines(table: pd.DataFrame, budget: int, k: int):
    """Hit rate by chunk size at an equal token budget and at an equal top-k: `table` is indexed by
    chunk size with hit_within_<budget> and recall_at_<k> columns."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    ax.plot(table.index, table[f"hit_within_{budget}"], "o-", label=f"within {budget} retrieved tokens")
    ax.plot(table.index, table[f"recall_at_{k}"], "s--", label=f"top-{k} chunks, whatever their size")
    ax.set(xscale="log", xlabel="tokens per chunk", ylabel="answer span retrieved", ylim=(0, 1.05),
           title="Chunk size at an equal budget and at an equal k")
    ax.set_xticks(list(table.index), [str(s) for s in table.index])
    ax.minorticks_off()
    ax.legend(loc="lower right", fontsize=8)
    return fig


def accuracy_by_context(table: pd.DataFrame):
    """Accuracy (with its lo and hi) against prompt tokens per question, one point per named row,
    and the chance line."""
    import matplotlib.pyplot as plt

    t = table
    fig, ax = plt.subplots(figsize=WIDE)
    ax.errorbar(t.prompt_tokens, t.accuracy, yerr=[t.accuracy - t.lo, t.hi - t.accuracy], fmt="o-", capsize=3,
                label="gold value ranked first (log-likelihood)")
    ax.axhline(t.chance.iloc[0], color="grey", ls=":", label="chance")
    for name, r in t.iterrows():
        ax.annotate(name, (r.prompt_tokens, r.accuracy), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set(xlabel="prompt tokens per question", ylabel="share of questions", ylim=(0, 1.05),
           title="Reading the retrieved chunks, scored by log-likelihood")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def answers_by_context(table: pd.DataFrame):
    """Generated answers' accuracy, retrieval recall and seconds per query against prompt tokens."""
    import matplotlib.pyplot as plt

    t = table.sort_values("prompt_tokens")
    fig, ax = plt.subplots(figsize=WIDE)
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


def refusal_sweep(sweep: pd.DataFrame, offtopic: pd.DataFrame | None, threshold: float):
    """Shares refused at each similarity threshold (near misses, answerable, off-topic) and the
    operating point."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    ax.plot(sweep.index, sweep.refusal_recall, "o-", label="near-miss questions refused")
    ax.plot(sweep.index, sweep.answerable_refused, "s-", label="answerable questions refused")
    if offtopic is not None:
        ax.plot(offtopic.index, offtopic.refusal_recall, "^-", label="off-topic questions refused")
    ax.axvline(threshold, color="grey", linestyle=":", label=f"near-miss operating point (highest J), {threshold:.2f}")
    ax.set(xlabel="similarity threshold", ylabel="share refused", title="Refusing under a similarity threshold")
    ax.legend(fontsize=8)
    return fig


def latency_by_index_size(table: pd.DataFrame):
    """Median query latency of HNSW and exact search by index size (log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    ax.plot(table.index, table.hnsw_p50_ms, "o-", label="Chroma HNSW, p50")
    ax.plot(table.index, table.exact_p50_ms, "s-", label="exact numpy search, p50")
    ax.set(xscale="log", xlabel="chunks in the index", ylabel="ms per query", title="Retrieval latency as the corpus grows")
    ax.legend(fontsize=8)
    return fig


def not_measured(title: str, why: str):
    """The figure a section shows where this run's profile does not measure it: its title and the
    plan's reason, so the page (and a glued figure key) says why instead of breaking."""
    import textwrap

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDE[0], 1.6))
    ax.axis("off")
    ax.text(0.0, 1.0, title, fontsize=11, fontweight="bold", va="top", transform=ax.transAxes)
    ax.text(0.0, 0.72, textwrap.fill(f"Not measured in this run: {why}", 95), fontsize=8, va="top",
            transform=ax.transAxes)
    return fig


def case_arms(scores: pd.DataFrame, n: int, checkpoints: pd.DataFrame | None = None):
    """Chapter 8: each arm's share of test questions answered (a Wilson 95 % interval on n), and beside
    it, where a fine-tune trained, its accuracy after each epoch on its own training questions and on
    the development questions, which chose the checkpoint."""
    import matplotlib.pyplot as plt

    from .stats import wilson_interval

    two = checkpoints is not None and len(checkpoints)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(WIDE[0], 3.2 if two else 2.6), squeeze=False)
    ax = axes[0][0]
    rates = scores["contains"].to_numpy()
    lows, highs = np.array([wilson_interval(r * n, n) for r in rates]).T
    y = np.arange(len(scores))[::-1]
    ax.errorbar(rates, y, xerr=[rates - lows, highs - rates], fmt="o", capsize=3)
    ax.set(yticks=y, yticklabels=list(scores.index), xlim=(0, 1), xlabel=f"test questions answered (n = {n})")
    if two:
        ax2 = axes[0][1]
        ax2.plot(checkpoints.index, checkpoints.trained_acc, "o-", label="its training questions")
        ax2.plot(checkpoints.index, checkpoints.dev_acc, "s-", label="development questions")
        ax2.set(xlabel="epochs of the fine-tune", ylim=(0, 1.02), title="The fine-tune's checkpoints")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig
