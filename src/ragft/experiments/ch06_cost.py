"""Chapter 6, cost: what serving and keeping each approach current costs a month, from the tokens,
latencies and training figures chapters 1-5 measured in the same run, priced by data/pricing.yaml;
the articles' cost figures (S1-S9, T5) rebuilt from their stated inputs; time to first token per
approach and a merged against an unmerged LoRA adapter (T2), timed here."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import costs, models, settings
from ..corpus import build_kb
from ..costs import Approach, Check, Workload
from ..results import ChapterRun, Clock, Measured, judged_of, open_chapter, read_chapter, read_published, state_comparisons
from ..plan import seed_tag
from ..prose import StatedComparison, glue, glue_findings
from ..train.tasks import lora_structured_name
from ..train.trainer import TARGETS

CHAPTER = "06_cost"
# Where each approach's tokens per query come from: (chapter, condition of its outcome_tokens).
# Chapter 4's table asks the same facts with the same chunks and top-k of every reader, so RAG, the
# fine-tune and the hybrid differ only in the approach; chapter 1's largest haystack is the long prompt.
SOURCES = {"long-context prompting": ("01_prompting", "haystack {largest}, generated"),
           "RAG": ("04_raft", "base + RAG (generated)"),
           "fine-tune": ("04_raft", "DSF closed (generated)"),
           "hybrid (RAFT + RAG)": ("04_raft", "RAFT + RAG (generated)")}
NEEDED = ("01_prompting", "02_rag", "03_finetune", "04_raft", "05_freshness")
KEYS = {"RAG": "rag", "fine-tune": "ft", "hybrid (RAFT + RAG)": "hybrid", "long-context prompting": "long"}  # metric prefixes
COLOURS = {"long-context prompting": "tab:purple", "RAG": "tab:blue", "fine-tune": "tab:orange",
           "hybrid (RAFT + RAG)": "tab:green"}


@dataclass
class Costs:
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    params: object
    docs: dict  # chapter -> results document the inputs come from
    origin: dict  # chapter -> "this run" | the published file it fell back to
    approaches: dict[str, Approach]
    workload: Workload
    measured: Measured = field(default_factory=Measured)  # what setup measured: each approach's tokens
    lm: object = None  # the model timed here (its dtype and device go into the provenance)


def read_inputs(profile: str) -> tuple[dict, dict]:
    """The results of chapters 1-5: this run's where it holds them, else the published ones of the
    profile (a reader's papermill run of this chapter alone). A chapter in neither is an error that
    says what to run."""
    docs, origin = {}, {}
    for chapter in NEEDED:
        doc = read_chapter(chapter)
        if usable(chapter, doc, profile):
            docs[chapter], origin[chapter] = doc, "this run"
            continue
        # a reader's run of this chapter alone: the published results, labelled
        published = read_published(chapter, profile)
        if published is not None:
            docs[chapter], origin[chapter] = published
        else:
            raise FileNotFoundError(
                f"chapter 6 prices what chapters 1-5 measured, and neither this run folder ({settings.run_dir()}) "
                f"nor the published results hold {chapter}: run `python -m ragft.run --profile {profile} "
                f"--chapters {' '.join(NEEDED)} {CHAPTER}`")
    return docs, origin


def usable(chapter: str, doc: dict | None, profile: str) -> bool:
    """A results file of this run folder that chapter 6 can price: the same profile, and for chapter 2
    a run that timed its stages (a bring-your-own run with only its own documents did not)."""
    if not doc or doc.get("profile") != profile:
        return False
    return chapter != "02_rag" or "embed_p50_ms" in doc.get("metrics", {})


def mean_tokens(doc: dict, condition: str) -> tuple[float, float]:
    """(mean prompt tokens, mean completion tokens) of a condition's outcome_tokens; a seeded arm's
    (its answers recorded per training seed, "<condition> (seed k)") over every seed's answers."""
    recorded = doc.get("outcome_tokens") or {}
    seeds = [recorded[name] for k in range(1, len(recorded) + 1) if (name := condition + seed_tag(k)) in recorded]
    parts = [recorded[condition]] if recorded.get(condition) else seeds
    if not parts or not all(parts):
        raise KeyError(f"chapter {doc.get('chapter')} recorded no tokens for {condition!r}; it has "
                       f"{sorted(recorded)}")
    arr = np.array([t for part in parts for t in part.values()], dtype=float)
    return float(arr[:, 0].mean()), float(arr[:, 1].mean())


def source(docs: dict, name: str) -> tuple[str, str]:
    """(chapter, condition) an approach's tokens come from; the long prompt is chapter 1's largest haystack."""
    import re

    chapter, condition = SOURCES[name]
    if "{largest}" in condition:
        pattern = re.escape(condition).replace(re.escape("{largest}"), r"(\d+)")
        sizes = [int(m.group(1)) for k in docs[chapter].get("outcome_tokens", {}) if (m := re.fullmatch(pattern, k))]
        if not sizes:
            raise KeyError(f"chapter {chapter} generated no answers in a haystack ({condition!r}): run it with long_context_tokens")
        condition = condition.format(largest=max(sizes))
    return chapter, condition


def build_approaches(docs: dict, params) -> dict[str, Approach]:
    base, tuned = params.serving_price, costs.fine_tuned_row(params.serving_price)
    for row_name in dict.fromkeys((base, tuned)):
        if costs.output_unpriced(row_name):
            print(costs.output_unpriced(row_name))
    override = {"long-context prompting": params.long_prompt_tokens, "RAG": params.rag_prompt_tokens,
                "fine-tune": params.ft_prompt_tokens, "hybrid (RAFT + RAG)": params.hybrid_prompt_tokens}
    out = {}
    for name in SOURCES:
        chapter, condition = source(docs, name)
        prompt, completion = mean_tokens(docs[chapter], condition)
        prompt = override[name] or prompt
        completion = params.completion_tokens or completion
        trained, retrieval = name in ("fine-tune", "hybrid (RAFT + RAG)"), name in ("RAG", "hybrid (RAFT + RAG)")
        out[name] = Approach(name, prompt, completion, tuned if trained else base, retrieval=retrieval,
                             trained=trained, retrain_on_update=name == "fine-tune")
    return out


def build_workload(docs: dict, params, queries_per_month: float | None = None,
                   updates_per_month: float | None = None) -> Workload:
    """The reader's volumes and rows, with re-indexing per update as chapter 5 measured it per document."""
    update = docs["05_freshness"]["tables"]["index_update"]
    changed = update["docs_changed"] + update["docs_added"]
    return Workload(
        queries_per_month=params.queries_per_month if queries_per_month is None else queries_per_month,
        updates_per_month=params.updates_per_month if updates_per_month is None else updates_per_month,
        train_tokens=params.train_tokens, training=params.training_price,
        training_life_months=params.training_life_months,
        reindex_tokens=params.docs_per_update * update["tokens_embedded"] / changed,
        writes_per_update=params.docs_per_update * update["chunks_written"] / changed,
        embedding=params.embedding_price, vector_db=params.vector_db, index_gb=params.index_gb)


def setup(params) -> Costs:
    settings.configure(params)
    folder, clock = open_chapter(CHAPTER)
    with clock.stage("inputs"):
        docs, origin = read_inputs(params.profile)
        approaches = build_approaches(docs, params)
        workload = build_workload(docs, params)
    measured = Measured()
    for name, key in KEYS.items():
        a = approaches[name]
        measured.metric(f"{key}_prompt_tokens_per_query", a.prompt_tokens, "exact")
        measured.metric(f"{key}_completion_tokens_per_query", a.completion_tokens, "derived",
                        tol=0.25 * a.completion_tokens + 1)
    return Costs(clock, folder, params, docs, origin, approaches, workload, measured)


def sources_table(c: Costs) -> pd.DataFrame:
    """Each approach: its tokens per query, where they were measured, the row it is served at, what else it pays."""
    lines = []
    for name, a in c.approaches.items():
        chapter, condition = source(c.docs, name)
        pays = (["retrieval (query embedding, vector read, index)"] if a.retrieval else []) + (
            ["a training run per update" if a.retrain_on_update else f"a training run per {c.workload.training_life_months:g} months"]
            if a.trained else [])
        lines.append({"approach": name, "prompt tokens": round(a.prompt_tokens, 1),
                      "completion tokens": round(a.completion_tokens, 1), "served at": a.price,
                      "also pays for": "; ".join(pays) or "nothing else",
                      "measured in": f"chapter {chapter[:2].lstrip('0')}, {condition!r} ({c.origin[chapter]})"})
    return pd.DataFrame(lines).set_index("approach")


# ---------------------------------------------------------------------------------------------
# Costs at the reader's volume, crossovers, the map


def monthly_table(c: Costs) -> pd.DataFrame:
    """Dollars a month by part, per approach, at the reader's volume and update frequency."""
    rows = {name: {**{k: round(v, 2) for k, v in costs.monthly_parts(a, c.workload).items()},
                   "total": round(costs.monthly_usd(a, c.workload), 2)} for name, a in c.approaches.items()}
    table = pd.DataFrame(rows).T
    table.columns = [f"{col} ($/month)" for col in table.columns]
    table.index.name = (f"{c.workload.queries_per_month:,.0f} queries and {c.workload.updates_per_month:g} "
                        f"updates a month")
    return table


def crossovers(c: Costs) -> dict:
    """The volumes where the fine-tune and the hybrid become cheaper than RAG (None: never, at these inputs)."""
    a = c.approaches
    return {"fine-tune": costs.crossover(a["fine-tune"], a["RAG"], c.workload),
            "hybrid (RAFT + RAG)": costs.crossover(a["hybrid (RAFT + RAG)"], a["RAG"], c.workload)}


def cost_metrics(c: Costs, cross: dict) -> Measured:
    """The crossovers and each approach's monthly dollars at the reader's volume, as metrics."""
    out, ft, hybrid = Measured(), cross["fine-tune"], cross["hybrid (RAFT + RAG)"]
    tol = lambda v: None if v is None else 0.1 * v  # noqa: E731  completion lengths may move on another CPU
    out.metric("crossover_queries_per_month_ft_vs_rag", ft, "derived", tol=tol(ft) or 0.0, none_means="never cheaper")
    out.metric("crossover_queries_per_month_hybrid_vs_rag", hybrid, "derived", tol=tol(hybrid) or 0.0,
               none_means="never cheaper")
    for name, appr in c.approaches.items():
        total = costs.monthly_usd(appr, c.workload)
        out.metric(f"{KEYS[name]}_monthly_usd", total, "derived", tol=0.1 * total)
    return out


def volumes(lo: float = 1e3, hi: float = 1e9, n: int = 61) -> np.ndarray:
    return np.logspace(np.log10(lo), np.log10(hi), n)


def cost_curves(c: Costs, cross: dict):
    """Monthly cost against queries a month per approach (log axes), crossovers with RAG marked."""
    import matplotlib.pyplot as plt

    q = volumes()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, a in c.approaches.items():
        ax.plot(q, [costs.monthly_usd(a, c.workload, v) for v in q], label=name, color=COLOURS[name])
    for name, v in cross.items():
        if v:
            ax.axvline(v, color=COLOURS[name], ls=":", lw=1)
            ax.annotate(f"{name} cheaper than RAG\nabove {v:,.0f}", (v, costs.monthly_usd(c.approaches["RAG"], c.workload, v)),
                        textcoords="offset points", xytext=(6, -24), fontsize=7, color=COLOURS[name])
    ax.axvline(c.workload.queries_per_month, color="black", lw=0.8, alpha=0.4)
    ax.set(xscale="log", yscale="log", xlabel="queries a month",
           ylabel="dollars a month", title=f"Monthly cost at {c.workload.updates_per_month:g} updates a month "
           f"({c.params.serving_price} prices)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


UPDATE_GRID = np.array([0, 0.25, 0.5, 1, 2, 4, 8, 16, 30])


def cheapest_map(c: Costs):
    """The cheapest approach over (queries a month, updates a month)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    names = list(c.approaches)
    q = volumes(n=41)
    grid = np.array([[names.index(costs.cheapest(list(c.approaches.values()),
                                                 build_workload(c.docs, c.params, v, u))) for v in q] for u in UPDATE_GRID])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.pcolormesh(q, np.arange(len(UPDATE_GRID)), grid, cmap=ListedColormap([COLOURS[n] for n in names]),
                  vmin=-0.5, vmax=len(names) - 0.5, shading="nearest")
    ax.scatter([c.workload.queries_per_month], [np.interp(c.workload.updates_per_month, UPDATE_GRID, np.arange(len(UPDATE_GRID)))],
               marker="*", s=120, color="white", edgecolor="black", label="your case")
    ax.set(xscale="log", xlabel="queries a month", ylabel="updates a month", title="The cheapest approach")
    ax.set_yticks(np.arange(len(UPDATE_GRID)), [f"{u:g}" for u in UPDATE_GRID])
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[n]) for n in names]
    ax.legend(handles + [ax.collections[-1]], names + ["your case"], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Latency, timed here: time to first token per approach (S1, S2), merged and unmerged LoRA (T2)


def _timed_answer(model, ids, new_tokens: int) -> tuple[float, float]:
    """(prefill ms, decode ms) of a greedy answer: the prompt in one pass, then one token per pass;
    logits for the last position only, as a server computes them."""
    import torch

    # on a GPU the kernels run asynchronously: wait for them, or the clock times only their launch
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1:].argmax(-1)
        sync()
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens):
            out = model(input_ids=tok, past_key_values=past, use_cache=True, logits_to_keep=1)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        t2 = time.perf_counter()
    return 1000 * (t1 - t0), 1000 * (t2 - t1)


def _prompt_ids(lm, params, n_tokens: float):
    """A prompt of n_tokens real knowledge-base text (its content does not change the time)."""
    text = " ".join(d.text for d in build_kb(params.kb_seed, params.kb).documents)
    n = max(1, int(round(n_tokens)))
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[0]
    ids = ids.repeat(n // len(ids) + 1)[:n]
    return ids.unsqueeze(0).to(lm.device)


@dataclass
class Timed:
    """The latency section: the medians by approach and model variant, and the timed repetitions (the
    outcomes T2 and S1 are judged on) with their metrics."""

    latency: dict  # "ttft_ms", "answer_ms", "decode_ms_per_token": name -> median
    measured: Measured


def measure_latency(c: Costs) -> Timed:
    """Time to first token at each approach's measured prompt length, and answers of the base model,
    its LoRA unmerged and merged, interleaved run by run so the machine's drift falls on all alike."""
    import copy
    import warnings

    from peft import LoraConfig, get_peft_model

    p, clock, measured = c.params, c.clock, Measured()
    with clock.stage("load_models"):
        lm = c.lm = models.load_lm(p.model, p.device, p.dtype)
    with clock.stage("first_token"):
        prompts = {name: _prompt_ids(lm, p, a.prompt_tokens) for name, a in c.approaches.items()}
        _timed_answer(lm.model, prompts["RAG"], 1)  # warm-up: the first pass pays for allocation
        ttft = {name: {} for name in prompts}
        for r in range(p.n_ttft_repeats):
            for name, ids in prompts.items():
                if name == "long-context prompting" and r > 0:
                    continue  # once: one prefill of a haystack costs seconds
                ttft[name][f"run {r}"] = _timed_answer(lm.model, ids, 0)[0]
        for name, times in ttft.items():
            measured.record(f"first token, {name}", times)
    with clock.stage("merged_vs_unmerged"):
        cfg = LoraConfig(r=p.lora_rank, lora_alpha=2 * p.lora_rank, lora_dropout=0.0, target_modules=TARGETS["all-linear"],
                         task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft asks a deprecated transformers property; nothing to act on
            warnings.simplefilter("ignore", FutureWarning)
            unmerged = get_peft_model(copy.deepcopy(lm.model), cfg).eval()
            merged = get_peft_model(copy.deepcopy(lm.model), cfg).merge_and_unload().eval()
        # the base model is copied like the other two: a loaded model's weights may still be mapped
        # from its file, and a fresh copy in memory ran 9 % faster than the loaded one (measured)
        variants = {"base": copy.deepcopy(lm.model).eval(), "LoRA merged": merged, "LoRA unmerged": unmerged}
        ids = _prompt_ids(lm, p, c.approaches["fine-tune"].prompt_tokens)
        for _ in range(2):  # warm-up: the first answers of each model run slower
            for m in variants.values():
                _timed_answer(m, ids, p.latency_new_tokens)
        answer = {name: {} for name in variants}
        decode = {name: [] for name in variants}
        order = list(variants)
        for r in range(p.n_latency_repeats):
            for name in order[r % 3:] + order[: r % 3]:
                pre, dec = _timed_answer(variants[name], ids, p.latency_new_tokens)
                answer[name][f"run {r}"] = pre + dec
                decode[name].append(dec / p.latency_new_tokens)
        for name, times in answer.items():
            measured.record(f"answer, {name}", times)
        del unmerged, merged, variants
    latency = {"ttft_ms": {k: float(np.median(list(v.values()))) for k, v in ttft.items()},
               "answer_ms": {k: float(np.median(list(v.values()))) for k, v in answer.items()},
               "decode_ms_per_token": {k: float(np.median(v)) for k, v in decode.items()}}
    ratio = lambda k: latency["answer_ms"][k] / latency["answer_ms"]["base"]  # noqa: E731
    measured.metric("merged_vs_base_latency_ratio", ratio("LoRA merged"), "machine")
    measured.metric("unmerged_vs_base_latency_ratio", ratio("LoRA unmerged"), "machine")
    for name, key in KEYS.items():
        measured.metric(f"ttft_ms_{key}", latency["ttft_ms"][name], "machine")
    return Timed(latency, measured)


def stage_table(c: Costs, timed: Timed) -> pd.DataFrame:
    """Milliseconds to the first token and to the whole answer per approach: the retrieval stages
    chapter 2 timed, the prefill timed here, the decode of the approach's measured completion."""
    m2 = c.docs["02_rag"]["metrics"]
    decode = timed.latency["decode_ms_per_token"]["base"]
    rows = {}
    for name, a in c.approaches.items():
        embed, search = (m2["embed_p50_ms"], m2["search_p50_ms"]) if a.retrieval else (0.0, 0.0)
        rows[name] = {"embed query": embed, "vector search": search, "prefill (first token)": timed.latency["ttft_ms"][name],
                      "decode the answer": a.completion_tokens * decode}
    table = pd.DataFrame(rows).T
    table["to first token"] = table[["embed query", "vector search", "prefill (first token)"]].sum(axis=1)
    table["whole answer"] = table["to first token"] + table["decode the answer"]
    return table.round(1).rename(columns=lambda col: f"{col} (ms)")


def latency_bars(table: pd.DataFrame):
    """The stage table as stacked bars."""
    import matplotlib.pyplot as plt

    stages = [col for col in table.columns if not col.startswith(("to first token", "whole answer"))]
    fig, ax = plt.subplots(figsize=(7, 3))
    left = np.zeros(len(table))
    for stage, colour in zip(stages, ("tab:cyan", "tab:blue", "tab:red", "tab:gray")):
        ax.barh(table.index, table[stage], left=left, label=stage.replace(" (ms)", ""), color=colour)
        left += table[stage].to_numpy()
    ax.set(xscale="symlog", xlabel="milliseconds (log scale above 10), median of timed runs",
           title="Where an answer's time goes, per approach")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The articles' figures, rebuilt (ragft.costs holds each check)


@dataclass
class Checks:
    """The articles' figures rebuilt: one Check each (a computed comparison on the results file), and
    the metrics they rest on."""

    checks: list[Check]
    measured: Measured


def article_checks(c: Costs, stages: pd.DataFrame) -> Checks:
    a, w, p, measured = c.approaches, c.workload, c.params, Measured()
    m2, m3 = c.docs["02_rag"]["metrics"], c.docs["03_finetune"]["metrics"]
    ms = lambda v: f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"
    retrieval = m2["embed_p50_ms"] + m2["search_p50_ms"]
    measured.metric("retrieval_added_ms_p50", retrieval, "machine")
    checks = [costs.range_check("S1-retrieval-ms", retrieval, *costs.stated("S1")["retrieval_ms"],
                                "query embedding and vector search (chapter 2, p50)", ms,
                                "where the embedder and the index run (here: in-process, on the CPU, beside the model)")]
    checks.append(costs.check_s2(retrieval, stages.loc["RAG", "to first token (ms)"]))
    checks.append(costs.check_s3(a["RAG"]))
    s4, s4_measured = costs.check_s4(a["RAG"])
    checks.append(s4)
    measured.metric("s4_monthly_usd_10m", costs.s4_rebuilt()[1e7], "exact")
    measured.metric("s4_monthly_usd_10m_measured", s4_measured[1e7], "exact")
    checks.append(costs.check_s5_table())
    at_100k = build_workload(c.docs, p, 1e5)
    measured.metric("s5_rag_monthly_usd_100k", costs.monthly_usd(a["RAG"], at_100k), "derived",
                    tol=0.1 * costs.monthly_usd(a["RAG"], at_100k))
    measured.metric("s5_ft_monthly_usd_100k", costs.monthly_usd(a["fine-tune"], at_100k), "derived",
                    tol=0.1 * costs.monthly_usd(a["fine-tune"], at_100k))
    cross = costs.crossover(a["fine-tune"], a["RAG"], w)
    count = lambda v: "never" if v is None else f"{v:,.0f} queries a month"
    low, high = costs.stated("S5")["crossover_calls_per_month"]
    checks.append(_volume_check("S5-crossover", cross, low, high, count,
                                "the fine-tune's training cost, its update frequency and the tokens each approach sends"))
    s6 = costs.stated("S6")
    checks.append(_volume_check("S6-thresholds", cross, s6["rag_cheaper_below"], s6["fine_tune_above"], count,
                                "the training cost and the update frequency (the source states neither)"))
    s7 = costs.stated("S7")
    static = build_workload(c.docs, p, 30 * s7["queries_per_day"], 0.0)
    saving = 1 - costs.monthly_usd(a["fine-tune"], static) / costs.monthly_usd(a["RAG"], static)
    measured.metric("s7_saving_measured", saving, "derived", tol=0.05)
    checks.append(costs.range_check("S7-saving", saving, *s7["saving"],
                                    f"the fine-tune's saving over RAG at {30 * s7['queries_per_day']:,} queries a month, static facts",
                                    lambda v: f"{v:.0%}", "the prompt tokens retrieval adds and the fine-tuned price premium"))
    best = m3.get("json_lora_best_size")
    long_prompt = Approach("long instruction", *mean_tokens(c.docs["03_finetune"], "base, long instruction: json_valid"), p.serving_price)
    tuned = Approach("LoRA", *mean_tokens(c.docs["03_finetune"], f"{lora_structured_name(best)}: json_valid"),
                     costs.fine_tuned_row(p.serving_price))
    s8, s8_measured = costs.check_s8(long_prompt, tuned)
    checks.append(s8)
    measured.metric("s8_saving_measured", s8_measured, "derived", tol=0.05)
    s9, s9_gb = costs.check_s9()
    checks.append(s9)
    measured.metric("s9_implied_storage_gb", s9_gb, "exact")
    t5, lora_70b = costs.check_t5_lora_70b(p.gpu_price, p.gpu_utilisation, p.train_tokens)
    checks += [t5, costs.check_t5_api()]
    measured.metric("t5_lora_70b_usd", lora_70b, "exact")
    measured.metric("t5_full_7b_usd", costs.train_usd(7e9, p.train_tokens, True, p.gpu_price, p.gpu_utilisation), "exact")
    measured.metric("t5_lora_7b_usd", costs.train_usd(7e9, p.train_tokens, False, p.gpu_price, p.gpu_utilisation), "exact")
    measured.metric("t5_full_70b_usd", costs.train_usd(70e9, p.train_tokens, True, p.gpu_price, p.gpu_utilisation), "exact")
    return Checks(checks, measured)


def _volume_check(claim: str, volume: float | None, low: float, high: float, unit, depends_on: str) -> Check:
    if volume is None:
        return Check(claim, f"{unit(low)}-{unit(high)}", "never", costs.rule(True, False, depends_on),
                     f"at these inputs the fine-tune is never cheaper than RAG; it depends on {depends_on}")
    return costs.range_check(claim, volume, low, high, "the volume above which the fine-tune costs less than RAG",
                             unit, depends_on)


def checks_table(checks: list[Check]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": k.claim, "the source says": k.stated, "rebuilt here": k.computed,
                          "verdict": k.verdict, "why": k.note} for k in checks]).set_index("claim")


def training_table(c: Costs) -> pd.DataFrame:
    """One training run of `train_tokens` on rented GPUs, by 6 N D (full) and 4 N D (LoRA), beside the
    CPU run of chapter 3 that checks the FLOP count and the utilisation."""
    p = c.params
    lines = []
    for size in (7e9, 70e9):
        for full in (False, True):
            flops = costs.train_flops(size, p.train_tokens, full)
            lines.append({"model": f"{size / 1e9:.0f}B", "method": "full" if full else "LoRA",
                          "FLOPs": f"{flops:.2e}", "GPU-hours": round(costs.gpu_hours(flops, p.gpu_price, p.gpu_utilisation), 2),
                          "dollars": round(costs.train_usd(size, p.train_tokens, full, p.gpu_price, p.gpu_utilisation), 2)})
    return pd.DataFrame(lines).set_index(["model", "method"])


def measured_training(c: Costs) -> dict:
    """Chapter 3's CPU runs: utilisation reached and the LoRA / full step-time ratio (4/6 by the FLOP count)."""
    runs = c.docs["03_finetune"]["tables"]["train_runs"]
    return {"lora_mfu": runs["lora"]["mfu"], "full_mfu": runs["full"]["mfu"],
            "lora_vs_full_step": runs["lora"]["step_s"] / runs["full"]["step_s"]}


# merged weights have the base's shape: their latency is a sanity check, not a test (the plan's T2-merged-latency)
LABELS = {"T2-merged-latency": ("merged LoRA", "base model", False),
          "T2-unmerged-latency": ("unmerged LoRA", "base model", False),
          "S1-context-prefill": ("RAG prompt", "fine-tune prompt", False)}


def findings(c: Costs, cross: dict, timed: Timed, checks: Checks, training: dict
             ) -> tuple[Measured, dict[str, StatedComparison]]:
    """What the chapter measured, together: the set-up's, the latency section's and the checks'
    outcomes and metrics, the cost and training metrics derived from their sections' results; and
    every comparison the plan declares here, judged on those outcomes (ragft.results.state_comparisons)."""
    derived = cost_metrics(c, cross)
    derived.metric("cpu_training_mfu_lora", training["lora_mfu"], "machine")
    derived.metric("lora_vs_full_step_ratio", training["lora_vs_full_step"], "machine")
    measured = Measured.merged(c.measured, timed.measured, checks.measured, derived)
    return measured, state_comparisons(CHAPTER, measured.outcomes, LABELS, profile=c.params.profile)


def glue_all(c: Costs, cross: dict, measured: Measured, stated: dict[str, StatedComparison], checks: Checks,
             training: dict) -> None:
    """Everything the prose cites, from what `findings` put together: metrics, comparisons, sentences."""
    w = c.workload
    glue_findings(measured.metrics, stated.values(),
                  {"crossover_ft_text": "never, at these inputs" if cross["fine-tune"] is None else f"{cross['fine-tune']:,.0f} queries a month",
                   "crossover_hybrid_text": "never, at these inputs" if cross["hybrid (RAFT + RAG)"] is None
                   else f"{cross['hybrid (RAFT + RAG)']:,.0f} queries a month",
                   "reader_volume": f"{w.queries_per_month:,.0f}", "reader_updates": f"{w.updates_per_month:g}",
                   "cheapest_here": costs.cheapest(list(c.approaches.values()), w),
                   "prices_as_of": costs.prices_as_of(), "serving_row": c.params.serving_price,
                   "tuned_row": costs.fine_tuned_row(c.params.serving_price),
                   "inputs_from": "; ".join(sorted({f"{k}: {v}" for k, v in c.origin.items()})),
                   "rag_top_k_text": str(c.docs["04_raft"]["params"]["rag_top_k"]),
                   "lora_mfu_text": f"{training['lora_mfu']:.0%}", "lora_step_text": f"{training['lora_vs_full_step']:.2f}",
                   **sources_figures()})
    for k in checks.checks:
        glue(f"verdict_{k.claim}", k.verdict)


def sources_figures() -> dict[str, str]:
    """The sources' own figures the prose quotes, from pricing.yaml's `stated` section (typed once)."""
    s1, s2, t5 = costs.stated("S1")["retrieval_ms"], costs.stated("S2"), costs.stated("T5")["lora_70b"]
    lora, full = costs.train_flops(1, 1, full=False), costs.train_flops(1, 1, full=True)
    return {"s1_stated_ms": f"{s1[0]:g}-{s1[1]:g}", "s2_stated_rag_ms": f"{s2['to_first_token_ms']['RAG']:g}",
            "t5_stated_run": f"{t5['gpus']} H100s for {t5['hours']:g} hours at ${t5['usd'][0]:,}-{t5['usd'][1]:,}",
            "lora_vs_full_flops_text": f"{lora / full:.2f}"}


def save(c: Costs, measured: Measured, stated: dict[str, StatedComparison], timed: Timed, checks: Checks) -> Path:
    """The chapter's one recording step: what its sections measured and the comparisons judged on it
    (`findings`), the computed checks, the tables (the cost model itself among them, so the verdict
    chapter prices its readers' cases with this run's measurements), written to the results file."""
    tables = Measured(tables={
        "checks": [{"claim": k.claim, "stated": k.stated, "computed": k.computed, "verdict": k.verdict, "note": k.note}
                   for k in checks.checks],
        "cost_model": {"approaches": {n: asdict(a) for n, a in c.approaches.items()}, "workload": asdict(c.workload)},
        "latency": timed.latency, "inputs_from": c.origin})
    judged = judged_of(stated) + [k.as_comparison() for k in checks.checks]
    return ChapterRun(CHAPTER, c.params, c.folder, c.clock).save(Measured.merged(measured, tables), judged, lm=c.lm)
