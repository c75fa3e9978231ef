"""Chapter 5, freshness: what each approach answers after the facts change, and what bringing it up to
date costs.

Steps, in the order the chapter runs them; each takes its inputs and returns its result (the Chapter
holds the set-up only):

  setup     the v1 world (chapter 3's test facts and its chosen DSF checkpoint of this run) and the v2
            world: a share `change_share` of the mutable facts changed, new product lines added. Test
            sets: the changed facts and the unchanged facts among chapter 3's test facts (the ones its
            fine-tune learnt), and facts about the new entities
  readers   chapter 3's DSF and chapter 4's RAFT reader, loaded (Readers)
  index_v1  the v1 documents indexed in Chroma, one document to a source (Index)
  before    base + RAG and the fine-tune asked the changed facts in the v1 world (a list of Asked)
  update_index  the change applied to the store by document id (each changed or new document upserted
            alone and timed, removed ones deleted), applied a second time (nothing may change), and the
            store checked chunk by chunk against the v2 documents (IndexUpdate)
  after     every approach in the v2 world, the fine-tunes with their v1 weights (a list of Asked)
  update_fine_tune  the fine-tune brought up to date three ways with chapter 3's recipe: retrained from
            the base on every v2 fact; the v1 adapter trained further on the changed facts only; and on
            them plus a replay sample of unchanged facts (Updates)
  planted_instruction  an instruction planted in the chunks the changed facts retrieve from their own
            updated document: how often the base model's reply obeys it, with plain sources and with
            the sources delimited as data (Planted)

Scoring is chapters 3 and 4's: the gold value against `n_candidates` look-alike values of its
attribute, ranked by the model's log-likelihood (RAFT's after its own quote). For a changed fact the
look-alikes always hold the value of the other version, so the same ranking says whether the answer
is **stale** (the v1 value ranked first after the change).

Every scored condition is recorded per question (the fact's qid): "<approach>, <world>: <set>" (1 when
the gold value is ranked first; world v1 or v2, set changed, unchanged or new), "<approach>, v2:
changed, stale" (1 when the v1 value is ranked first), and U2's timed repetitions, "seconds to update
one fact: index" and "...: continued training" (each an independent measurement: one changed fact's
document upserted on its own, or one continued-training run of the fine-tune on that fact alone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config, handover, metrics, prose, raft, rag, results, untrusted
from ..corpus import build_kb
from ..generation import generate
from ..metrics import contains
from ..plan import seed_tag, the_plan
from ..rag.answer import cited_messages
from ..rag.store import token_counter
from ..results import ChapterRun, Clock, Measured, judged_of, state_comparisons
from ..prose import StatedComparison, glue
from ..stats import mean_interval, wilson_interval
from ..train import tasks, units
from ..train.measure import release_memory
from . import common
from .common import chapter3_facts, dsf_adapter, merge_seeds, not_here, seeded, start, training_seeds

CHAPTER = "05_freshness"
REPLAY_COMPARISONS = ("U-replay",)  # the replay update's: measured where the plan says
SETS = ("changed", "unchanged", "new")
# Readers by outcome-name prefix: the prompt style each reads with, and whether it reads documents.
BASE_RAG, DSF, DSF_RAG, RAFT_RAG = "base + RAG", "DSF", "DSF + RAG", "RAFT + RAG"
UPDATES = {"retrain": "DSF retrained on v2", "continued": "DSF continued on the changes",
           "replay": "DSF continued with replay"}
INDEX = "index"


@dataclass
class Chapter:
    """The chapter's state: parameters, results file, models, both worlds, the test sets, the store."""

    params: object
    p3: object  # chapter 3's parameters (the DSF recipe)
    p4: object  # chapter 4's (the RAFT reader)
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    lm: object
    embed_model: object
    kb: object  # v1
    kb2: object  # v2
    facts: list  # chapter 3's test facts (v1 questions)
    sets: dict  # (world, set) -> questions of that world
    candidates: dict  # (world, set) -> [(values, gold index, index of the other version's value or None)]
    dsf_adapter: str
    dsf_source: str
    lr: float  # the DSF's learning rate, for every update
    exposures: int  # exposures per fact of every update (update_exposures, else the DSF's own)
    dsf_exposures: int  # the DSF's exposures per fact (chapter 3's chosen checkpoint)
    dsf_seeds: list = field(default_factory=list)  # a seeded draw's: chapter 3's chosen checkpoint of each training seed

    def summary(self) -> str:
        n = {s: len(self.sets[("v2", s)]) for s in SETS}
        return (f"{len(self.facts)} of chapter 3's test facts: {n['changed']} change in v2 and {n['unchanged']} do not; "
                f"{n['new']} facts about new products. {self.dsf_source}")


def setup(params) -> Chapter:
    """Seeds, threads and network policy; the model and the embedder; both worlds and the test sets;
    where the DSF adapter comes from (chapter 3's of this run, else trained here)."""
    p3 = config.resolve("03_finetune", params.profile, model=params.model, device=params.device)
    p4 = config.resolve(handover.RAFT_CHAPTER, params.profile, model=params.model, device=params.device)  # the device asked for
    sizes = replace(params.kb, v2_change_share=params.change_share)  # v1's documents do not depend on it
    folder, clock, lm, embed_model, kb = start(CHAPTER, params, embedder=True, kb_sizes=sizes)
    kb2 = build_kb(params.kb_seed, sizes, "v2")
    facts, facts_source = chapter3_facts(kb, p3)
    v2 = {q.qid: q for q in kb2.questions}
    changed = [q for q in facts if q.changed_in_v2]
    old = {q.qid for q in kb.questions}
    new = [q for q in kb2.sample("single", len(kb2.by_kind("single")), params.seed) if q.qid not in old][:params.n_new]
    sets = {("v1", "changed"): changed, ("v2", "changed"): [v2[q.qid] for q in changed],
            ("v2", "unchanged"): [v2[q.qid] for q in facts if not q.changed_in_v2], ("v2", "new"): new}
    value = {"v1": {q.qid: q.answer for q in changed}, "v2": {q.qid: v2[q.qid].answer for q in changed}}
    candidates = {}
    for (world, part), qs in sets.items():
        base, other = (kb, value["v2"]) if world == "v1" else (kb2, value["v1"])
        cands = []
        for q in qs:  # a changed fact's look-alikes hold its value in the other world
            alt = other.get(q.qid) if part == "changed" else None
            values, gold = base.candidates(q, params.n_candidates, params.seed, include=(alt,) if alt else ())
            cands.append((values, gold, values.index(alt) if alt in values else None))
        candidates[(world, part)] = cands
    with clock.stage("dsf_handover"):
        adapter, source, trained = dsf_adapter(p3, kb, facts)
    lr, exposures = dsf_recipe(p3, trained is None)
    seeds = []
    if seeded(p3):  # a draw with the study: every seed of chapter 3's fine-tune, from its hand-over of this run
        handed = handover.seeded_dsf(p3.model, [q.qid for q in facts])
        if handed.why:
            raise ValueError(f"chapter 5 on a seeded draw reads chapter 3's fine-tune of every seed from this run folder, "
                             f"but {handed.why}: run chapter 3 first (it reads its committed units)")
        seeds, source = handed.gold, f"DSF models: chapter 3's chosen checkpoints of its {len(handed.gold)} training seeds from this run."
    ch = Chapter(params, p3, p4, clock, folder, lm, embed_model, kb, kb2, facts, sets, candidates, adapter,
                 f"{source} Test facts: {facts_source}.", lr, params.update_exposures or exposures, exposures, seeds)
    return ch


def dsf_recipe(p3, from_chapter_3: bool) -> tuple[float, int]:
    """(learning rate, exposures per fact) the DSF adapter was trained with: chapter 3's choice of this
    run when the adapter is chapter 3's (dsf_adapter trained nothing here), else what the fallback
    trains with (common.dsf_recipe); the updates below train with the same recipe."""
    doc = results.read_chapter("03_finetune") if from_chapter_3 else None
    return common.dsf_recipe(p3, common.published_dsf(p3), doc)


# ---------------------------------------------------------------------------------------------
# Asking: one reader, one world, one test set


def outcome(approach: str, world: str, part: str) -> str:
    return f"{approach}, {world}: {part}"


def stale_outcome(approach: str) -> str:
    return f"{approach}, v2: changed, stale"


@dataclass
class Asked:
    """One reader on one test set: the accuracy table's row and the candidate ranking behind it."""

    row: dict
    ranking: object
    measured: Measured  # its per-question outcomes (and, on the changed facts of v2, which answers were stale)


def ask(ch: Chapter, approach: str, model_lm, style: str, world: str, part: str, ranked: dict) -> Asked | None:
    """A reader's candidate ranking on one test set (the documents `ranked` holds for it, retrieved
    from the store as it was then, for a reader that reads; a quoting reader's own reply first),
    with its per-question outcomes; None when the set is empty."""
    p, qs = ch.params, ch.sets[(world, part)]
    if not qs:
        return None
    cands = ch.candidates[(world, part)]
    docs = [[h.text for h in hits[:p.rag_top_k]] for hits in ranked[(world, part)]] if style != "closed" else None
    questions = [q.test_text for q in qs]
    name = outcome(approach, world, part)
    _, r = raft.read(model_lm, questions, docs, style, [c[0] for c in cands], [c[1] for c in cands],
                     p.cot_max_new_tokens, p.batch_size, name)
    qids = [q.qid for q in qs]
    measured = Measured()
    measured.record(name, r.outcomes(qids), tokens={q: (t, 0) for q, t in zip(qids, r.prompt_tokens)})
    row = {"approach": approach, "world": world, "set": part, "n": len(qs), "acc": r.accuracy, "chance": r.chance}
    row["acc_lo"], row["acc_hi"] = wilson_interval(sum(r.correct), len(qs))
    if world == "v2" and part == "changed":
        top = [int(np.argmax(s)) for s in r.scores]
        stale = {q: int(c[2] is not None and t == c[2]) for q, t, c in zip(qids, top, cands)}
        measured.record(stale_outcome(approach), stale)
        row["stale"] = sum(stale.values()) / len(qids)
    return Asked(row, r, measured)


def ask_seeds(ch: Chapter, approach: str, models: list, style: str, world: str, part: str, ranked: dict) -> Asked | None:
    """ask() with one model per training seed (a seeded draw; one model: ask itself): each seed's
    outcomes "<outcome> (seed k)" and their mean "<outcome>", the row the seeds' mean (the first seed's
    ranking kept)."""
    if len(models) == 1:
        return ask(ch, approach, models[0], style, world, part, ranked)
    found = [ask(ch, approach + seed_tag(k), m, style, world, part, ranked) for k, m in enumerate(models, 1)]
    if found[0] is None:
        return None
    measured = merge_seeds([a.measured for a in found])  # "<approach> (seed 1), v2: changed" -> "... changed (seed 1)"
    row = {c: (sum(a.row[c] for a in found) / len(found) if isinstance(v, float) else v) for c, v in found[0].row.items()}
    row["approach"] = approach
    row["acc_lo"], row["acc_hi"] = mean_interval(list(measured.outcomes[outcome(approach, world, part)].values()))
    return Asked(row, found[0].ranking, measured)


def search(ch: Chapter, store, world: str, parts: tuple[str, ...]) -> dict:
    """{(world, set): the chunks each question of the set retrieves from the store as it is now}."""
    retriever = rag.Retriever(store, ch.embed_model)  # a new one: BM25 is built from the store's chunks
    return {(world, part): retriever.search([q.test_text for q in ch.sets[(world, part)]], ch.params.rag_top_k, "hybrid")
            if ch.sets[(world, part)] else [] for part in parts}


@dataclass
class Readers:
    """The fine-tuned readers, loaded, and where the RAFT adapter came from."""

    dsf: object
    raft: object
    raft_adapter: str
    raft_source: str
    dsf_seeds: list = field(default_factory=list)  # a seeded draw's: the fine-tune of every seed (the first is `dsf`)

    @property
    def fine_tunes(self) -> list:
        """The fine-tune's models: one per training seed, or the one."""
        return self.dsf_seeds or [self.dsf]


def readers(ch: Chapter) -> Readers:
    """Chapter 3's DSF (its chosen checkpoint) and chapter 4's RAFT reader, loaded and merged."""
    adapter, source = raft_adapter(ch)
    seeds = [units.model(ref) for ref in ch.dsf_seeds]
    return Readers(seeds[0] if seeds else units.model(ch.dsf_adapter), units.model(adapter), adapter, source, seeds)


def raft_adapter(ch: Chapter) -> tuple[str, str]:
    """Chapter 4's RAFT adapter of this run (`artifacts["raft_adapter"]`), else trained here with chapter
    4's recipe (ragft.raft) on chapter 4's chunks, in a store of this chapter's: the same records train
    the same unit. Returns (the adapter's unit checkpoint, the line that says which happened)."""
    handed = handover.raft(ch.p4.model)
    if handed.usable:
        return handed.adapter, f"RAFT model: chapter 4's adapter from this run ({handed.adapter.split('@')[0][5:]}), read, not retrained."
    why = handed.why
    p4 = ch.p4
    store = rag.kb_store(ch.kb, p4.chunk_size, ch.embed_model, ch.folder / "chroma" / f"{CHAPTER}-raft")
    chunks = store.all_chunks()
    sources, _ = raft.training_sources(ch.kb, {q.qid for q in ch.facts}, chunks, p4.n_train, p4.seed)
    hard = raft.hard_negatives(rag.Retriever(store, ch.embed_model), sources, p4)
    fit = raft.train_reader(p4, raft.records(sources, chunks, p4, hard=hard), "raft-kb")
    how = "read from its unit" if fit.cached else "trained now"
    return fit.ref(), f"RAFT model: fine-tuned here with chapter 4's parameters ({how}), because {why}."


# ---------------------------------------------------------------------------------------------
# Before and after the change, and the change itself


@dataclass
class Index:
    """The v1 store and what the v1 questions retrieved from it."""

    store: object
    v1_chunks: int
    ranked: dict


def index_v1(ch: Chapter) -> Index:
    """The v1 documents indexed in Chroma, one document to a source; the changed facts' v1 retrieval."""
    p = ch.params
    with ch.clock.stage("index_v1"):
        store = rag.ChunkStore(f"fresh-{p.chunk_size}", path=ch.folder / "chroma" / CHAPTER,
                               embed_model=ch.embed_model, chunk_size=p.chunk_size, chunk_overlap=0)
        first = store.ingest(rag.kb_documents(ch.kb), fresh=True)
        return Index(store, first.chunks_written, search(ch, store, "v1", ("changed",)))


def before(ch: Chapter, readers: Readers, index: Index) -> list[Asked]:
    """The two readers U1 and K8 set against each other, base + RAG and the closed-book fine-tune, asked
    the changed facts in the v1 world: what each knew before the change (the readers that only combine
    them, DSF + RAG and RAFT + RAG, are asked after it; issue 46: about 60 s of the cpu book)."""
    with ch.clock.stage("before"):
        return [ask(ch, BASE_RAG, ch.lm, "rag", "v1", "changed", index.ranked),
                ask_seeds(ch, DSF, readers.fine_tunes, "closed", "v1", "changed", index.ranked)]


@dataclass
class IndexUpdate:
    """The change applied to the store: its measurements, each changed document's upsert seconds,
    and what the v2 questions retrieve afterwards."""

    measures: dict
    upsert_s: dict
    ranked: dict


def update_index(ch: Chapter, index: Index) -> IndexUpdate:
    """Apply the v2 change by document id to the v1 store: each changed or new document upserted alone
    (timed: a change arrives, its page is re-indexed), removed documents deleted; then the same change
    again (it must write nothing), and the store checked against the v2 documents chunk by chunk."""
    store, old, new = index.store, rag.kb_documents(ch.kb), rag.kb_documents(ch.kb2)
    before_hash = {s.doc_id: s.content_hash for s in old}
    changes = [s for s in new if before_hash.get(s.doc_id) != s.content_hash]
    removed = sorted(set(before_hash) - {s.doc_id for s in new})

    def apply() -> tuple[float, dict, int]:
        seconds, written, outcomes = {}, 0, {}
        for s in changes:
            t = time.perf_counter()
            report = store.upsert([s])
            seconds[s.doc_id] = time.perf_counter() - t
            written += report.chunks_written
            outcomes.update(report.docs)
        if removed:
            report = store.delete(removed)
            outcomes.update(report.docs)
        return seconds, outcomes, written

    with ch.clock.stage("index_update"):
        t = time.perf_counter()
        upsert_s, outcomes, written = apply()
        total_s = time.perf_counter() - t
    _, again, rewritten = apply()
    count = token_counter(ch.embed_model)
    expected = {n.id_ for n in store.split(new)}
    v1_only = {n.id_ for n in store.split(old)} - expected
    stored = store.chunk_ids()
    ranked = search(ch, store, "v2", SETS)
    retrieved = [h.chunk_id for part in SETS for hits in ranked[("v2", part)] for h in hits]
    measures = {
        "v1_chunks": index.v1_chunks, "seconds": total_s, "docs_changed": sum(o == "replaced" for o in outcomes.values()),
        "docs_added": sum(o == "added" for o in outcomes.values()), "docs_deleted": len(removed),
        "docs_total_v2": len(new), "chunks_written": written,
        "tokens_embedded": sum(len(count(t)) for t in store.embed_texts(changes)),
        "second_application_chunks_written": rewritten,
        "second_application_unchanged": sum(o == "unchanged" for o in again.values()),
        "chunks_after": len(stored), "chunks_expected": len(expected),
        "chunks_lost": len(expected - set(stored)), "chunks_extra": len(set(stored) - expected),
        "chunks_duplicated": len(stored) - len(set(stored)), "stale_chunks": len(set(stored) & v1_only),
        "stale_chunks_retrieved": sum(c in v1_only for c in retrieved),
    }
    return IndexUpdate(measures, upsert_s, ranked)


def after(ch: Chapter, readers: Readers, update: IndexUpdate) -> list[Asked]:
    """Every approach in the v2 world: the readers on the updated index, the fine-tunes with v1 weights."""
    asked = []
    with ch.clock.stage("after"):
        for part in SETS:
            asked.append(ask(ch, BASE_RAG, ch.lm, "rag", "v2", part, update.ranked))
            asked.append(ask_seeds(ch, DSF, readers.fine_tunes, "closed", "v2", part, update.ranked))
        for part in ("changed", "new"):
            asked.append(ask_seeds(ch, DSF_RAG, readers.fine_tunes, "rag", "v2", part, update.ranked))
        asked.append(ask(ch, RAFT_RAG, readers.raft, "raft", "v2", "changed", update.ranked))
    return asked


def change_table(asked: list[Asked | None]) -> pd.DataFrame:
    """Accuracy per approach, world and test set, with its 95 % Wilson interval and n, and the stale
    rate on the changed facts after the change (one row per reader and set asked)."""
    return pd.DataFrame([a.row for a in asked if a is not None]).set_index(["approach", "world", "set"])


def table_style(table: pd.DataFrame):
    pct = {c: "{:.0%}" for c in ("acc", "acc_lo", "acc_hi", "chance", "stale")}
    return table.style.format({**pct, "n": "{:.0f}"}, na_rep="-")


# ---------------------------------------------------------------------------------------------
# Bringing the fine-tune up to date


@dataclass
class Updates:
    """The fine-tune brought up to date: the costs table (the index's row first), each update's
    training metrics, and its readings on the changed and unchanged facts."""

    table: pd.DataFrame
    fits: dict
    asked: list
    repetitions: Measured  # U2's timed repetitions (update_repetitions)


def update_fine_tune(ch: Chapter, update: IndexUpdate, table: pd.DataFrame) -> Updates:
    """The DSF brought to v2 three ways, each with chapter 3's recipe (its learning rate, the most
    paraphrases, a constant rate) for update_exposures per fact: retrained from the base on every v2 fact;
    the v1 adapter trained further on the changed facts only; and on them plus a replay sample of
    unchanged facts. Each scored closed book on the changed and the unchanged facts; beside them the
    index update (`update`) with base + RAG's accuracy from the change table."""
    p, p3 = ch.params, ch.p3
    count = max(p3.paraphrase_counts)
    cfg = tasks.dsf_config(p3, count, ch.exposures, ch.lr)
    v2 = {q.qid: q for q in ch.kb2.questions}
    changed, unchanged = ch.sets[("v2", "changed")], ch.sets[("v2", "unchanged")]
    replay = unchanged[:round(p.replay_share * len(changed))]
    plans = {"retrain": ([v2[q.qid] for q in ch.facts], None), "continued": (changed, ch.dsf_adapter),
             "replay": (changed + replay, ch.dsf_adapter)}
    if not_here(p, REPLAY_COMPARISONS):
        del plans["replay"]  # the plan leaves replay (U-replay, exploratory) to other profiles
    rows, fits, asked = [], {}, []
    # a seeded draw: each update once per training seed, retrained with that seed or continued from that
    # seed's fine-tune (the plan's `seeds`); otherwise the one fine-tune
    starts = ch.dsf_seeds or [ch.dsf_adapter]
    seeds = training_seeds(p3) if ch.dsf_seeds else [None]
    for key, (facts, start_from) in plans.items():
        with ch.clock.stage(key):
            found = [units.train(p3.model, tasks.dsf_examples(facts, count), cfg if seed is None else replace(cfg, seed=seed),
                                 label=f"fresh-{key}", start=units.start_of(first) if start_from else None)
                     for seed, first in zip(seeds, starts)]
            fit = found[0]
            fits[key] = {**fit.metrics, "facts": len(facts)}
            answerers = [f_.merge().lm for f_ in found]
            accs = {}
            for part in ("changed", "unchanged"):
                a = ask_seeds(ch, UPDATES[key], answerers, "closed", "v2", part, update.ranked)
                asked.append(a)
                accs[part] = a.row["acc"] if a else None
        rows.append({"update": UPDATES[key], "facts_trained": len(facts), "train_s": fit.metrics["train_s"],
                     "train_tokens": fit.metrics.get("train_tokens"), "changed_acc": accs["changed"],
                     "unchanged_acc": accs["unchanged"]})
        del fit, found, answerers
        release_memory()
    idx = update.measures
    rows.insert(0, {"update": "index (upsert by document id)", "facts_trained": 0, "train_s": idx["seconds"],
                    "train_tokens": idx["tokens_embedded"],
                    "changed_acc": acc_of(table, BASE_RAG, "changed"), "unchanged_acc": acc_of(table, BASE_RAG, "unchanged")})
    with ch.clock.stage("u2_repetitions"):
        repetitions = update_repetitions(ch, update.upsert_s)
    costs = pd.DataFrame(rows).set_index("update").rename(columns={"train_s": "seconds", "train_tokens": "tokens"})
    return Updates(costs, fits, asked, repetitions)


U2_INDEX, U2_TRAIN = "seconds to update one fact: index", "seconds to update one fact: continued training"


def update_repetitions(ch: Chapter, upsert_s: dict) -> Measured:
    """U2's timed repetitions, each a measurement of its own (the plan: at least 5 per arm, Welch's t
    on log seconds): for each of the first changed facts in distinct documents, the seconds its
    document's upsert took (timed on its own when the change was applied) and the seconds of a
    continued-training run of the knowledge fine-tune on that fact alone. No time is shared out or
    copied among facts."""
    p3, count = ch.p3, max(ch.p3.paraphrase_counts)
    cfg = tasks.dsf_config(p3, count, ch.exposures, ch.lr)
    facts, docs = [], set()
    for q in ch.sets[("v2", "changed")]:
        if q.doc_ids[0] not in docs and q.doc_ids[0] in upsert_s:
            facts.append(q)
            docs.add(q.doc_ids[0])
    facts = facts[:the_plan().get("U2-seconds").n]
    out = Measured()
    out.record(U2_INDEX, {q.qid: upsert_s[q.doc_ids[0]] for q in facts})
    seconds = {}
    for q in facts:
        fit = units.train(p3.model, tasks.dsf_examples([q], count), cfg, label=f"fresh-one-{q.qid}",
                          start=units.start_of(ch.dsf_adapter))
        seconds[q.qid] = fit.metrics["train_s"]
        del fit
        release_memory()
    out.record(U2_TRAIN, seconds)
    return out


def acc_of(table: pd.DataFrame, approach: str, part: str, world: str = "v2") -> float:
    """An approach's accuracy on a test set in a change table (NaN when it was not asked)."""
    key = (approach, world, part)
    return float(table.loc[key, "acc"]) if key in table.index else float("nan")


def costs_style(table: pd.DataFrame):
    return table.style.format({"seconds": "{:,.1f} s", "tokens": "{:,.0f}", "changed_acc": "{:.0%}",
                               "unchanged_acc": "{:.0%}", "facts_trained": "{:.0f}"}, na_rep="-")


# ---------------------------------------------------------------------------------------------
# Knowledge conflict: the old value in the weights, the new one in the retrieved chunk


def conflict(ch: Chapter, asked: list[Asked | None], update: IndexUpdate) -> dict:
    """On the changed facts whose v1 value the DSF gives closed book (the old value sits in its
    weights) and whose retrieved chunks state the v2 value: how often DSF + RAG answers with the
    retrieved value (the context wins), with the stale one (the weights win), or with neither."""
    qs, cands = ch.sets[("v2", "changed")], ch.candidates[("v2", "changed")]
    closed = Measured.merged(*(a.measured for a in asked if a)).outcomes.get(stale_outcome(DSF), {})
    reading = next((a.ranking for a in asked if a and (a.row["approach"], a.row["world"], a.row["set"])
                    == (DSF_RAG, "v2", "changed")), None)
    if reading is None:
        return {"n": 0}
    wins = {"context": 0, "weights": 0, "neither": 0}
    for j, (q, c) in enumerate(zip(qs, cands)):
        shown = " ".join(h.text for h in update.ranked[("v2", "changed")][j][:ch.params.rag_top_k])
        if not closed.get(q.qid) or not contains(shown, q.answers):
            continue
        top = int(np.argmax(reading.scores[j]))
        wins["context" if top == c[1] else "weights" if top == c[2] else "neither"] += 1
    n = sum(wins.values())
    return {"n": n, **{k: v / n if n else float("nan") for k, v in wins.items()}}


# ---------------------------------------------------------------------------------------------
# An update that carries an instruction (N1)

PLANTED_PLAIN, PLANTED_DELIMITED = "planted instruction, plain", "planted instruction, delimited"
PLANTED_ROWS = {PLANTED_PLAIN: "base + RAG, plain sources", PLANTED_DELIMITED: "base + RAG, delimited sources"}


@dataclass
class Planted:
    """The untrusted-document section: one row per reader (n, the share of replies that obey the
    planted instruction and the share that hold the gold value, with 95 % intervals) and the replies."""

    table: pd.DataFrame
    n: int
    replies: dict
    measured: Measured  # per question: obeyed, and held the gold value


def planted_instruction(ch: Chapter, update: IndexUpdate) -> Planted:
    """The changed facts whose retrieved chunks (after the update) include their own document's: the
    instruction of `ragft.untrusted` planted in those chunks, as an updated document would carry it;
    the base model's generated reply with chapter 2's numbered sources, and with the sources delimited
    as data (recorded per question as "<reader>: followed" and "<reader>: answered"). The fine-tune
    reads no document at answer time: its row is 0 by construction, shown, not tested."""
    p, qs = ch.params, ch.sets[("v2", "changed")]
    hits = update.ranked[("v2", "changed")]
    chosen = [(q, h[:p.rag_top_k]) for q, h in zip(qs, hits) if any(x.doc_id in q.doc_ids for x in h[:p.rag_top_k])]
    passages = [[(untrusted.plant(x.text) if x.doc_id in q.doc_ids else x.text) for x in chunks] for q, chunks in chosen]
    questions, qids = [q.test_text for q, _ in chosen], [q.qid for q, _ in chosen]
    rows, replies, measured = [], {}, Measured()
    with ch.clock.stage("planted"):
        for name, build in ((PLANTED_PLAIN, cited_messages), (PLANTED_DELIMITED, untrusted.delimited_messages)):
            texts = generate(ch.lm, [build(q, d) for q, d in zip(questions, passages)], p.max_new_tokens,
                             p.batch_size, desc=name).texts if chosen else []
            obeyed = {qid: untrusted.followed(t) for qid, t in zip(qids, texts)}
            right = {qid: int(metrics.contains(t, q.answers)) for qid, t, (q, _) in zip(qids, texts, chosen)}
            if chosen:
                measured.record(f"{name}: followed", obeyed)
                measured.record(f"{name}: answered", right)
            replies[name] = texts
            rows.append(planted_row(PLANTED_ROWS[name], obeyed, right))
    rows.append({"reader": "DSF, closed book (reads no document)", "n": len(chosen), "followed": 0.0})
    return Planted(pd.DataFrame(rows).set_index("reader"), len(chosen), replies, measured)


def planted_row(reader: str, obeyed: dict, right: dict) -> dict:
    """A reader's row: n, and the shares that obeyed the plant and that held the gold value, each with
    its 95 % Wilson interval (NaN where no question qualified)."""
    n = len(obeyed)
    row = {"reader": reader, "n": n}
    for key, outcomes in (("followed", obeyed), ("answered", right)):
        row[key] = sum(outcomes.values()) / n if n else float("nan")
        row[f"{key}_lo"], row[f"{key}_hi"] = wilson_interval(sum(outcomes.values()), n) if n else (float("nan"),) * 2
    return row


def planted_style(table: pd.DataFrame):
    return table.style.format({c: "{:.0%}" for c in table.columns if c != "n"}, na_rep="-")


# ---------------------------------------------------------------------------------------------
# Headline metrics, comparisons, prose


@dataclass
class Findings:
    """What the chapter's steps returned, handed together to the metrics, comparisons and glue."""

    readers: Readers
    update: IndexUpdate
    asked: list  # every Asked of before, after and the updates
    table: pd.DataFrame  # the change table (before and after)
    updates: Updates
    planted: Planted

    @property
    def all_asked(self) -> pd.DataFrame:
        return change_table(self.asked)

    @property
    def measured(self) -> Measured:
        """Every step's per-question outcomes, in run order."""
        return Measured.merged(*(a.measured for a in self.asked if a), self.updates.repetitions, self.planted.measured)


def headline_metrics(ch: Chapter, f: Findings) -> Measured:
    """The chapter's headline metrics, each declared with its kind on the results file."""
    m = Measured()
    put, outcomes = m.metric, f.measured.outcomes
    table = f.all_asked
    n = {part: len(ch.sets[("v2", part)]) for part in SETS}

    def acc(key, approach, part, world="v2"):
        value = acc_of(table, approach, part, world)
        if pd.notna(value):
            put(key, value, "rate", n=n[part])

    for part in SETS:
        put(f"{part}_n", n[part], "exact")
    acc("rag_v1_changed_acc", BASE_RAG, "changed", "v1")
    acc("dsf_v1_changed_acc", DSF, "changed", "v1")
    acc("dsf_rag_v1_changed_acc", DSF_RAG, "changed", "v1")
    acc("raft_rag_v1_changed_acc", RAFT_RAG, "changed", "v1")
    acc("rag_v2_changed_acc", BASE_RAG, "changed")
    acc("dsf_v2_changed_acc", DSF, "changed")
    acc("dsf_rag_v2_changed_acc", DSF_RAG, "changed")
    acc("raft_rag_v2_changed_acc", RAFT_RAG, "changed")
    acc("rag_unchanged_acc", BASE_RAG, "unchanged")
    acc("dsf_unchanged_acc", DSF, "unchanged")
    acc("rag_new_entity_acc", BASE_RAG, "new")
    acc("dsf_new_entity_acc", DSF, "new")
    acc("dsf_rag_new_entity_acc", DSF_RAG, "new")
    for key, label in UPDATES.items():
        acc(f"{key}_v2_changed_acc", label, "changed")
        acc(f"{key}_unchanged_acc", label, "unchanged")
    for key, approach in (("rag", BASE_RAG), ("dsf", DSF), ("dsf_rag", DSF_RAG), ("raft_rag", RAFT_RAG)):
        stale = outcomes.get(stale_outcome(approach))
        if stale:
            put(f"{key}_stale_rate", sum(stale.values()) / len(stale), "rate", n=len(stale))
    c = conflict(ch, f.asked, f.update)
    put("conflict_n", c["n"], "exact")
    if c["n"]:
        put("conflict_context_wins_rate", c["context"], "rate", n=c["n"])
        put("conflict_weights_win_rate", c["weights"], "rate", n=c["n"])
    idx, fits = f.update.measures, f.updates.fits
    put("index_update_s", idx["seconds"], "machine")
    for key in fits:
        put(f"{key}_s", fits[key]["train_s"], "machine")
        put(f"{key}_tokens", fits[key]["train_tokens"], "exact")
    put("update_seconds_ratio", fits["retrain"]["train_s"] / idx["seconds"], "machine")
    put("continued_seconds_ratio", fits["continued"]["train_s"] / idx["seconds"], "machine")
    put("index_update_tokens", idx["tokens_embedded"], "exact")
    put("update_tokens_ratio", fits["retrain"]["train_tokens"] / max(1, idx["tokens_embedded"]), "exact")
    put("planted_n", f.planted.n, "exact")
    if f.planted.n:
        for key, reader in (("plain", PLANTED_PLAIN), ("delimited", PLANTED_DELIMITED)):
            for what in ("followed", "answered"):
                put(f"planted_{what}_{key}", f.planted.table.loc[PLANTED_ROWS[reader], what], "rate", n=f.planted.n)
    put("update_exposures", ch.exposures, "exact")
    put("dsf_exposures", ch.dsf_exposures, "exact")
    for key, name in (("index_docs_changed", "docs_changed"), ("index_docs_added", "docs_added"),
                      ("index_docs_deleted", "docs_deleted"), ("index_chunks_written", "chunks_written"),
                      ("index_chunks_after_update", "chunks_after"), ("index_chunks_expected", "chunks_expected"),
                      ("index_chunks_lost", "chunks_lost"), ("index_chunks_extra", "chunks_extra"),
                      ("index_chunks_duplicated", "chunks_duplicated"), ("stale_chunks_after_update", "stale_chunks"),
                      ("stale_chunks_retrieved", "stale_chunks_retrieved"),
                      ("second_application_chunks_written", "second_application_chunks_written")):
        put(key, idx[name], "exact")
    return m


# What each comparison the plan declares for this chapter calls its two arms in its sentence
LABELS = {
    "U1-rag-vs-dsf": ("RAG on the updated index", "the fine-tune with its v1 weights"),
    "U1-retrain": ("the fine-tune retrained on v2", "the same fine-tune before retraining"),
    "U2-seconds": ("a continued-training run on one fact", "its document's upsert"),
    "K8-stale": ("the fine-tune", "RAG"),
    "U-replay": ("the update with replay", "the update without it"),
    "U-dsf-rag": ("DSF + RAG", "base + RAG"),
    "N1-delimit": ("plain sources", "sources delimited as data"),
}


def comparisons(ch: Chapter, f: Findings) -> dict[str, StatedComparison]:
    """Every comparison the analysis plan declares for this chapter, judged on the run's outcomes
    (ragft.results.state_comparisons), with its arms' labels; `save` keeps them on the results file."""
    return state_comparisons(CHAPTER, f.measured.outcomes, LABELS, profile=ch.params.profile)


def sentences(ch: Chapter, f: Findings) -> dict[str, str]:
    """The prose's sentences built from this run's numbers."""
    idx = f.update.measures
    c = conflict(ch, f.asked, f.update)
    intact = not (idx["chunks_lost"] or idx["chunks_extra"] or idx["chunks_duplicated"] or idx["stale_chunks"])
    out = {
        "index_sentence": (
            f"The change touched {idx['docs_changed']} of the v1 documents and added {idx['docs_added']} "
            f"(deleted {idx['docs_deleted']}); applying it wrote {idx['chunks_written']:,} chunks "
            f"({idx['tokens_embedded']:,} embedder tokens) in {idx['seconds']:.1f} s. Afterwards the store held "
            f"{idx['chunks_after']:,} chunks against the {idx['chunks_expected']:,} of the v2 documents: "
            + ("exactly those, none lost, none duplicated, no v1 chunk left" if intact else
               f"{idx['chunks_lost']} lost, {idx['chunks_extra']} extra, {idx['chunks_duplicated']} duplicated, "
               f"{idx['stale_chunks']} stale: the update is broken")
            + f"; the same change applied again wrote {idx['second_application_chunks_written']} chunks"),
        "conflict_sentence": (
            f"On {c['n']} changed facts the fine-tune gives the old value closed book while the retrieved chunks "
            f"state the new one; there DSF + RAG answers with the retrieved value in {c['context']:.0%} of cases "
            f"and with the value in its weights in {c['weights']:.0%}" if c["n"] else
            "No changed fact had both the old value in the fine-tune's answer and the new value in its retrieved "
            "chunks in this run, so the conflict was not observed"),
    }
    return out


PLANTED_RATES = [f"planted_{what}_{key}" for what in ("followed", "answered") for key in ("plain", "delimited")]


def glue_findings(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> None:
    prose.glue_findings(headline.metrics, comparisons.values(), sentences(ch, f))
    for key in PLANTED_RATES:  # no question retrieved its planted chunk: the prose shows nan, the table says n = 0
        if key not in headline:
            glue(key, float("nan"))
    glue("dsf_source", ch.dsf_source)
    glue("raft_source", f.readers.raft_source)
    glue("change_share", f"{ch.params.change_share:.0%}")
    glue("rag_top_k", ch.params.rag_top_k)


def save(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> Path:
    """The chapter's one recording step: every step's outcomes, the headline metrics, the judged
    comparisons, the tables and the DSF adapter it updated, written to the results file."""
    kept = Measured(tables=dict(
        changes=f.all_asked.reset_index().to_dict("records"), index_update=f.update.measures,
        fine_tune_updates={k: {x: v for x, v in m.items() if isinstance(v, (int, float, str))}
                           for k, m in f.updates.fits.items()},
        test_sets={f"{w} {s}": [q.qid for q in qs] for (w, s), qs in ch.sets.items()},
        planted=f.planted.table.reset_index().to_dict("records"), planted_replies=f.planted.replies),
        artifacts={"dsf_adapter": ch.dsf_adapter})
    run = ChapterRun(CHAPTER, ch.params, ch.folder, ch.clock)
    return run.save(Measured.merged(f.measured, headline, kept), judged_of(comparisons), lm=ch.lm)
