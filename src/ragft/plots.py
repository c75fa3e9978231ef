"""The chapters' figures (chapters 1, 2, 3, 4, 5 and 8; chapters 6 and 7 still draw theirs in their own
modules): each takes plain tables (the rows the results file stores) and returns a matplotlib figure;
the chapters decide what to plot, never how."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import wilson_interval

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
    operating point chosen on development questions."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    ax.plot(sweep.index, sweep.refusal_recall, "o-", label="near-miss questions refused")
    ax.plot(sweep.index, sweep.answerable_refused, "s-", label="answerable questions refused")
    if offtopic is not None:
        ax.plot(offtopic.index, offtopic.refusal_recall, "^-", label="off-topic questions refused")
    ax.axvline(threshold, color="grey", linestyle=":", label=f"operating point (chosen on development questions), {threshold:.2f}")
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
    it, where the fine-tune's arms trained, each arm's accuracy after each epoch on the development
    questions, which chose the arm and checkpoint (solid), and on its own training data (dashed)."""
    import matplotlib.pyplot as plt

    two = checkpoints is not None and len(checkpoints)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(WIDE[0], 3.2 if two else 2.6), squeeze=False)
    ax = axes[0][0]
    rates = scores["contains"].to_numpy()
    lows, highs = np.array([wilson_interval(r * n, n) for r in rates]).T
    y = np.arange(len(scores))[::-1]
    ax.errorbar(rates, y, xerr=[rates - lows, highs - rates], fmt="o", capsize=3)
    ax.set(yticks=y, yticklabels=list(scores.index), xlim=(0, 1), xlabel=f"test questions answered (n = {n})")
    if two:
        ax2, checkpoints = axes[0][1], checkpoints.reset_index()  # one row per arm and epoch
        for i, (arm, rows) in enumerate(checkpoints.groupby("arm", sort=False)):
            colour = f"C{i}"
            ax2.plot(rows.epoch, rows.dev_acc, "s-", color=colour, label=f"{arm}: development")
            ax2.plot(rows.epoch, rows.trained_acc, "o--", color=colour, label=f"{arm}: its own training data")
        chosen = checkpoints[checkpoints.chosen]
        ax2.plot(chosen.epoch, chosen.dev_acc, "k*", markersize=12, label="chosen")
        ax2.set(xlabel="epochs of the fine-tune", ylim=(0, 1.02), title="The fine-tune's arms")
        ax2.legend(fontsize=6)
    fig.tight_layout()
    return fig


def paired_bars(table: pd.DataFrame, left: str, right: str, labels: tuple[str, str], xlabel: str, title: str,
                intervals: dict[str, tuple] | None = None):
    """Two shares per condition as paired horizontal bars (a missing right-hand value draws as 0), with
    error bars for the columns `intervals` gives as (low, high) sequences, one value per row."""
    import matplotlib.pyplot as plt

    def err(col):
        if not intervals or col not in intervals:
            return None
        values = table[col].to_numpy(dtype=float)
        low, high = (np.asarray(b, dtype=float) for b in intervals[col])
        return np.nan_to_num(np.clip([values - low, high - values], 0, None))

    fig, ax = plt.subplots(figsize=WIDE)
    y = np.arange(len(table))
    bars = {"capsize": 2, "error_kw": {"lw": 0.8}}
    ax.barh(y - 0.2, table[left], 0.4, label=labels[0], xerr=err(left), **bars)
    ax.barh(y + 0.2, table[right].fillna(0), 0.4, label=labels[1], xerr=err(right), **bars)
    ax.set_yticks(y, table.index, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.05), xlabel=xlabel, title=title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 1: prompting


def accuracy_vs_tokens(points: pd.DataFrame, shots: pd.DataFrame, haystacks: pd.DataFrame, model_name: str):
    """Gold value ranked first (with its 95 % Wilson interval) against prompt tokens per query: the
    test-set conditions (`points`) as points, few-shot (`shots`) and haystacks as lines, chance as a
    dotted line. Each table: chapter 1's ranked rows by condition (ll_acc, ll_lo, ll_hi, chance,
    prompt_tokens; k for the few-shot rows)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def errors(frame):
        return [frame["ll_acc"] - frame["ll_lo"], frame["ll_hi"] - frame["ll_acc"]]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(points["prompt_tokens"], points["ll_acc"], yerr=errors(points), fmt="o", color="C0",
                capsize=3, label="test set conditions")
    for name, r in points.iterrows():
        ax.annotate(name, (r["prompt_tokens"], r["ll_acc"]), fontsize=8, xytext=(4, 6), textcoords="offset points")
    if len(shots):
        ax.errorbar(shots["prompt_tokens"], shots["ll_acc"], yerr=errors(shots), fmt="s-", color="C2", capsize=3,
                    label="few-shot, k = " + ", ".join(str(int(k)) for k in shots["k"]))
    ax.errorbar(haystacks["prompt_tokens"], haystacks["ll_acc"], yerr=errors(haystacks), fmt="o--", color="C3",
                capsize=3, label="long-context haystacks")
    ax.axhline(points["chance"].iloc[0], color="grey", ls=":", lw=1, label="chance (1 of 4 values)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.set_xlabel("prompt tokens per query (log scale)")
    ax.set_ylabel("gold value ranked first (95 % interval)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{model_name}: knowledge against prompt tokens")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 3: fine-tuning


def knowledge_curve(curve: pd.DataFrame, rag: float, chosen: int, n_choices: int, base: dict | None = None,
                    gold: float | None = None):
    """The knowledge curve: accuracy on trained and held-out phrasings (test facts), and on the known
    real-world questions, against exposures per fact and against training seconds, with base + RAG's
    accuracy on the same held-out questions as a line (and the base model's with the gold document,
    `gold`, as another), chance (1 of `n_choices`) as a third, and the chosen checkpoint marked.
    `base`: the base model's {trained_acc, heldout_acc, known_acc}, drawn at 0 exposures and 0 seconds."""
    import matplotlib.pyplot as plt

    if base:
        curve = pd.concat([pd.DataFrame([{"exposures": 0, "seconds": 0.0, **base}]), curve], ignore_index=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, x, label in ((axes[0], "exposures", "exposures per fact (epochs x paraphrases)"),
                         (axes[1], "seconds", "training seconds (this machine)")):
        for col, name, style in (("trained_acc", "trained phrasing", "o-"), ("heldout_acc", "held-out phrasing", "s-"),
                                 ("known_acc", "known real-world facts", "^--")):
            if curve[col].notna().any():
                ax.plot(curve[x], curve[col], style, label=name)
        ax.axhline(rag, color="grey", ls=":", label="base + RAG (held-out)")
        if gold is not None:
            ax.axhline(gold, color="grey", ls="-.", lw=0.9, label="base + gold document (held-out)")
        ax.axhline(1 / n_choices, color="lightgrey", ls="-", lw=0.8, label="chance")
        ax.axvline(float(curve.loc[curve.exposures == chosen, x].iloc[0]), color="black", lw=0.6, alpha=0.5)
        ax.set(xlabel=label, ylim=(0, 1.05))
    axes[0].set(ylabel="gold ranked first", title="Knowledge curve (test facts)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def knowledge_bars(table: pd.DataFrame, n_choices: int):
    """Held-out and trained-paraphrase accuracy per condition (the gold ranked first of `n_choices`),
    as paired horizontal bars with 95 % Wilson intervals."""
    def wilson(col):
        bounds = [wilson_interval(v * n, int(n)) if pd.notna(v) else (v, v) for v, n in zip(table[col], table["n"])]
        return [lo for lo, _ in bounds], [hi for _, hi in bounds]

    return paired_bars(table, "held_out", "trained_paraphrase", ("held-out paraphrase", "trained paraphrase"),
                       f"gold ranked first of {n_choices} (chance {1 / n_choices:.0%}; "
                       f"n = {int(table['n'].iloc[0])}, 95 % intervals)",
                       "Facts: fine-tuned closed book against RAG",
                       intervals={c: wilson(c) for c in ("held_out", "trained_paraphrase")})


def structured_output(table: pd.DataFrame):
    """Valid JSON, exact schema and fields right per condition, with 95 % intervals."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(table) + 1.2))
    y = np.arange(len(table))
    for i, (col, label) in enumerate([("json_valid", "valid JSON"), ("schema_adherence", "exact schema"),
                                      ("fields_correct", "fields right")]):
        err = None
        if f"{col}_low" in table:
            err = np.clip([table[col] - table[f"{col}_low"], table[f"{col}_high"] - table[col]], 0, None)
        ax.barh(y + (i - 1) * 0.27, table[col], 0.27, label=label, xerr=err, capsize=2, error_kw={"lw": 0.8})
    ax.set_yticks(y, table.index, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.05), xlabel=f"share of test products (n = {int(table['n'].iloc[0])}, 95 % intervals)",
           title="Structured output: prompting, a grammar and fine-tuning")
    ax.legend(fontsize=8, loc="lower right")
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 4: RAFT


def raft_table(table: pd.DataFrame):
    """Candidate accuracy (with its 95 % Wilson interval) and refusal AUROC per approach."""
    return paired_bars(table, "acc", "refusal_auroc",
                       ("gold ranked first among the candidates", "refusal AUROC (0.5: no signal)"),
                       f"share / area (n = {int(table['n'].max())} questions, 95 % intervals)",
                       "Knowledge-base questions, every approach",
                       intervals={"acc": (table["acc_lo"], table["acc_hi"])})


def raft_ablations(p_table: pd.DataFrame, d_table: pd.DataFrame, why: str = ""):
    """F2 (accuracy and quote correctness against the oracle share P) beside F5 (accuracy per count of
    training distractors), with 95 % Wilson intervals; `why` they were not measured, where they were not."""
    import matplotlib.pyplot as plt

    if p_table.empty:
        return not_measured("F2, F5: the ablations", why)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.8), sharey=True)
    err = lambda t: [t.acc - t.acc_lo, t.acc_hi - t.acc]  # noqa: E731  (95 % Wilson)
    axes[0].errorbar(p_table.p_oracle, p_table.acc, yerr=err(p_table), fmt="o-", capsize=3, label="gold ranked first")
    axes[0].plot(p_table.p_oracle, p_table.quote_correct, "s--", label="quote correct")
    axes[0].set(xlabel="P, share of examples with the oracle", ylabel="share of test questions", ylim=(0, 1),
                title="F2: oracle share")
    axes[0].legend(fontsize=8)
    axes[1].bar(d_table.n_distractors.astype(int).astype(str), d_table.acc, yerr=err(d_table), capsize=3)
    axes[1].set(xlabel="distractors per training example", title="Distractors in training")
    return fig


def raft_top_k(curve: pd.DataFrame, why: str = ""):
    """Each reader's gold ranked first against the test-time top-k (F5, F6); `why` they were not
    measured, where the curve is empty."""
    import matplotlib.pyplot as plt

    if curve.empty:
        return not_measured("F5, F6: documents at test time", why)
    fig, ax = plt.subplots(figsize=(6, 3))
    for name in curve:
        ax.plot(curve.index, curve[name], "o-", label=name)
    ax.set(xticks=list(curve.index), xlabel="retrieved chunks in the prompt (top-k)", ylabel="gold ranked first",
           ylim=(0, 1), title="F5, F6: accuracy against documents at test time")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 5: freshness


def changed_facts(table: pd.DataFrame):
    """Accuracy on the changed facts before and after the change, per approach, with 95 % intervals:
    `table` is indexed by (approach, set, world) with acc, acc_lo, acc_hi and n."""
    changed = table.xs("changed", level="set")
    wide = changed["acc"].unstack("world")
    low, high = changed["acc_lo"].unstack("world"), changed["acc_hi"].unstack("world")
    wide = wide.reindex(columns=["v1", "v2"])
    return paired_bars(wide, "v1", "v2", ("before the change (v1 truth)", "after (v2 truth)"),
                       f"gold ranked first on the changed facts (n = {int(changed['n'].max())}, 95 % intervals)",
                       "Changed facts, before and after the change",
                       intervals={"v1": (low["v1"].reindex(wide.index), high["v1"].reindex(wide.index)),
                                  "v2": (low["v2"].reindex(wide.index), high["v2"].reindex(wide.index))})
