"""What every chapter's experiment does first, in one place."""

from __future__ import annotations

from pathlib import Path

from .. import handover, metrics, models, rag, settings
from ..corpus import build_kb
from ..plan import seed_tag, the_plan
from ..results import Measured, open_chapter, read_published
from ..train import tasks, units

REFUSAL_SUFFIX = " refusal"  # the condition that holds a condition's unanswerable questions


def not_here(params, comparisons: tuple[str, ...]) -> str:
    """Why this profile's run leaves a section's comparisons to other profiles (the plan's
    `profiles`), or "" when it measures any of them."""
    away = the_plan().not_measured(params.profile)
    return away[comparisons[0]] if all(c in away for c in comparisons) else ""


def elsewhere_label(comparison_id: str) -> str:
    """Where a comparison is measured, as its "not measured in this run" sentence says it."""
    return the_plan().elsewhere(comparison_id)


def start(chapter: str, params, embedder: bool = False, kb_sizes=None):
    """Network policy, seeds and threads from the parameters; the chapter's run folder, held, and its
    clock (ragft.results.open_chapter); the language model (and the embedder, on the model's device);
    the knowledge base (of `kb_sizes`, default params.kb). Returns (folder, clock, lm, embed_model or
    None, kb)."""
    import gc

    settings.configure(params)
    folder, clock = open_chapter(chapter)
    with clock.stage("load_models"):
        lm = models.load_lm(params.model, params.device, params.dtype)
        embed_model = rag.load_embedder(params.embedder, lm.device) if embedder else None
    kb = build_kb(params.kb_seed, kb_sizes or params.kb)
    # the imports, the models and the knowledge base live as long as the chapter: out of the
    # collector's sight, each full collection (release_memory before every training) skips their
    # ~700,000 objects, 0.5 s a collection on these CPUs
    gc.freeze()
    return folder, clock, lm, embed_model, kb


def split_outcomes(items: list, gen, texts: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    """Per-question outcomes of one condition, by meaning: "answer" holds the "contains" score of
    each answerable question, "refusal" 1 or 0 for each unanswerable one; each with {qid: (prompt
    tokens, completion tokens)}. `texts`: the answers to score when they are not the generated texts
    themselves (a RAFT reply's final answer). A part with no questions is left out."""
    answered, refused = metrics.answer_outcomes(items, gen.texts if texts is None else texts)
    tokens = {it.qid: (p, c) for it, p, c in zip(items, gen.prompt_tokens, gen.completion_tokens)}
    return {part: (scores, {q: tokens[q] for q in scores})
            for part, scores in (("answer", answered), ("refusal", refused)) if scores}


def answer_outcomes(name: str, items: list, gen, texts: list[str] | None = None) -> Measured:
    """A condition's per-question outcomes: answers under `name`, refusals under `name + " refusal"`."""
    out = Measured()
    for part, (scores, tokens) in split_outcomes(items, gen, texts).items():
        out.record(name if part == "answer" else name + REFUSAL_SUFFIX, scores, tokens=tokens)
    return out


# ---------------------------------------------------------------------------------------------
# The draw's test facts and its training seeds (the plan's `draw` and `seeds`)


def drawn_facts(kb, params) -> tuple[list, list]:
    """(test facts, development facts). With test_documents (a draw of whole documents, the plan's
    `draw`): every single fact of test_documents documents drawn among those holding documents_min_facts
    or more, and every fact of dev_documents others. Without: n_facts facts sampled across the base and
    n_dev_facts other ones (the pilot's draw)."""
    if not params.test_documents:
        facts = kb.sample("single", params.n_facts, params.seed)
        return facts, development_facts(kb, facts, params.n_dev_facts, params.seed)
    test = kb.documents_drawn(params.test_documents, 0, params.documents_min_facts)
    dev = kb.documents_drawn(params.dev_documents, 1, params.documents_min_facts, exclude=tuple(test))
    return kb.facts_of(test), kb.facts_of(dev)


def seeded(params) -> bool:
    """Whether every fine-tune arm trains with every seed of n_training_seeds: a draw with the
    knowledge study (study_lrs; the plan's `seeds`). Otherwise LoRA's method run alone does."""
    return bool(params.study_lrs)


def training_seeds(params) -> list[int]:
    """The training seeds of every seeded arm: seed, seed + 1, ..."""
    return [params.seed + i for i in range(params.n_training_seeds)]


def mean_outcomes(per_seed: list[dict]) -> dict:
    """{qid: mean score} over the seeds' {qid: score} (the same questions in each)."""
    if any(set(o) != set(per_seed[0]) for o in per_seed):
        raise ValueError("the seeds' outcomes cover different questions: a seed mean pairs the same questions")
    return {q: sum(o[q] for o in per_seed) / len(per_seed) for q in per_seed[0]}


def record_seeds(into: Measured, name: str, per_seed: list[dict], tokens: list | None = None) -> dict:
    """Each seed's outcomes as "<name> (seed k)" and their mean as "<name>"; the mean returned."""
    for k, outcomes in enumerate(per_seed, 1):
        into.record(name + seed_tag(k), outcomes, tokens=tokens[k - 1] if tokens else None)
    mean = mean_outcomes(per_seed)
    into.record(name, mean)
    return mean


def merge_seeds(outs: list[Measured]) -> Measured:
    """One seeded arm's records from its seeds' own (`outs`, the k-th seed's names carrying seed_tag(k)
    anywhere: "DSF closed (seed 2) (generated)"): each condition per seed ("<condition> (seed k)") and
    their mean, with each seed's tokens (record_seeds)."""
    out = Measured()
    for part in outs[0].outcomes:
        names = [part.replace(seed_tag(1), seed_tag(k)) for k in range(1, len(outs) + 1)]
        record_seeds(out, part.replace(seed_tag(1), ""), [o.outcomes[n] for o, n in zip(outs, names)],
                     tokens=[o.outcome_tokens.get(n) for o, n in zip(outs, names)])
    return out


# ---------------------------------------------------------------------------------------------
# Chapter 3's fine-tune, handed over to the chapters after it (ragft.handover)


def chapter3_facts(kb, p3) -> tuple[list, str]:
    """Chapter 3's test facts: the list its results name (`tables["dsf_facts"]`) when chapter 3 ran in
    this run folder on the same model and knowledge base, else the sample chapter 3's parameters draw.
    Returns (facts, where they came from)."""
    qids = handover.dsf_facts(p3.model, p3.kb_seed)
    by_qid = {q.qid: q for q in kb.questions}
    if qids and all(q in by_qid for q in qids):
        return [by_qid[q] for q in qids], "chapter 3's list from this run"
    return drawn_facts(kb, p3)[0], "drawn with chapter 3's parameters"


def development_facts(kb, test: list, n: int, seed: int) -> list:
    """n single facts that are not test facts, drawn reproducibly: every choice of chapter 3 (the
    learning rates, the checkpoint) is made on them, never on a test fact."""
    taken = {q.qid for q in test}
    pool = [q for q in kb.sample("single", len(kb.by_kind("single")), seed + 1) if q.qid not in taken]
    if len(pool) < n:
        raise ValueError(f"n_dev_facts={n}: only {len(pool)} single facts are left after {len(test)} test facts; "
                         "lower n_facts or n_dev_facts, or use a larger knowledge base")
    return pool[:n]


def curve_run(params, facts: list, dev_facts: list, lr: float):
    """The curve's training run: the test and the development facts together, the most paraphrases,
    up to the last of curve_exposures, with a snapshot after each checkpoint's epoch. dsf_adapter calls
    it with chapter 3's parameters for chapters 4 and 5, to reload the same run from the cache."""
    count = max(params.paraphrase_counts)
    return tasks.train_dsf(params, facts + dev_facts, count, max(params.curve_exposures), lr=lr, label=f"dsf-p{count}",
                           snapshots=tuple(e // count for e in params.curve_exposures))


def checkpoint_ref(result, exposures: int, count: int) -> str:
    """The curve unit's checkpoint after `exposures` exposures per fact, by name (units.Trained.ref)."""
    return result.ref(exposures // count)


def dsf_adapter(p3, kb, facts: list):
    """Chapter 3's closed-book fine-tune (DSF) on `facts`, handed over explicitly: the adapter chapter 3
    of this run names in its results (`artifacts["dsf_adapter"]`, its chosen checkpoint). When chapter 3
    has not run here (a later chapter alone), fine-tuned other facts or another model, or its adapter
    folder is gone, chapter 3's curve run is trained here (or reloaded from the cache) with chapter 3's
    parameters, and the checkpoint chapter 3 chose in its published results is taken.
    Returns (the adapter's unit checkpoint, units.Trained.ref; the line that says which happened; the unit
    when it was asked for here)."""
    handed = handover.dsf(p3.model, [q.qid for q in facts])
    if handed.usable:
        return (handed.adapter, f"DSF model: chapter 3's adapter from this run ({handed.adapter.split('@')[0][5:]}), "
                "read, not retrained.", None)
    why = handed.why
    published = published_dsf(p3)
    (lr, exposures), at = dsf_recipe(p3, published), recipe_words(p3, published)
    print(f"Chapter 3's fine-tune is trained here, because {why}: {training_estimate(p3, len(facts), published)}",
          flush=True)
    dev = development_facts(kb, facts, p3.n_dev_facts, p3.seed)
    result = curve_run(p3, facts, dev, lr)
    how = "read from its unit" if result.cached else "trained now"
    ref = checkpoint_ref(result, exposures, max(p3.paraphrase_counts))
    return (ref, f"DSF model: fine-tuned here with chapter 3's parameters {at} ({how}), because {why}.", result)


def published_dsf(p3) -> tuple[dict, str] | None:
    """Chapter 3's published metrics for this model, with the label that says where they came from
    (ragft.results.read_published), or None: what a DSF trained outside chapter 3 follows."""
    published = read_published(handover.DSF_CHAPTER, p3.profile)
    if published is None or (published[0].get("params") or {}).get("model") != p3.model:
        return None
    return published[0].get("metrics") or {}, published[1]


def training_estimate(p3, n_facts: int, published: tuple[dict, str] | None) -> str:
    """What training chapter 3's curve run here will cost, said before it starts: its optimizer steps,
    and their time at the published run's LoRA step time (2 cores of the faster CPU kind)."""
    import math

    n = max(p3.paraphrase_counts)
    steps = math.ceil((n_facts + p3.n_dev_facts) * n / p3.train_batch_size) * (max(p3.curve_exposures) // n)
    step_s = published[0].get("lora_step_s") if published else None
    if not step_s:
        return f"{steps} optimizer steps"
    total = steps * step_s
    took = f"{total:.0f} s" if total < 120 else f"{total / 60:.0f} minutes"
    return (f"{steps} optimizer steps, about {took} at the published run's {step_s:.2f} s a step (2 cores of "
            "the faster CPU kind; twice that on an AVX2-only CPU, far less on a GPU)")


def dsf_recipe(p3, published: tuple[dict, str] | None, doc: dict | None = None) -> tuple[float, int]:
    """(learning rate, exposures per fact) of chapter 3's chosen fine-tune: from chapter 3's results of
    this run (`doc`) when given, else its published results for this model, else lora_lr and the
    curve's last checkpoint. Chapter 5 updates the fine-tune with the same recipe."""
    metrics = (doc or {}).get("metrics") or (published[0] if published else {})
    lr = metrics.get("lora_lr_chosen") or p3.lora_lr
    exposures = metrics.get("dsf_chosen_exposures") or max(p3.curve_exposures)
    return float(lr), int(exposures)


def recipe_words(p3, published: tuple[dict, str] | None) -> str:
    """The words that say where dsf_recipe's values came from."""
    lr, exposures = dsf_recipe(p3, published)
    if published and published[0].get("dsf_chosen_exposures"):
        return (f"at the learning rate and checkpoint chapter 3 chose in its {published[1]} ({lr:g}, {exposures} "
                "exposures per fact)")
    return f"at lora_lr ({lr:g}) and the curve's last checkpoint ({exposures} exposures; no published choice for {p3.model})"


def dsf_model(p3, kb, facts: list):
    """The DSF model itself (`dsf_adapter`), ready to answer (the adapter merged). Returns (model, the
    line that says where it came from)."""
    ref, line, _ = dsf_adapter(p3, kb, facts)
    return units.model(ref), line
