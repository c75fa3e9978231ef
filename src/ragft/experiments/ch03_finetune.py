"""Chapter 3, fine-tuning: what it teaches (facts, a JSON format), what it costs, what it forgets.

Steps, in the order the chapter runs them (prompts, question order, batch sizes and seeds are those
of the published numbers, so do not reorder them). Each takes its inputs and returns its result; the
Chapter holds the set-up only (parameters, models, facts, the known questions, the base probe).

  learning_rate_sweep  each swept method at three rates on the development facts, never test facts
                       (the best development held-out accuracy, ties to the larger gold margin)
  knowledge_curve      one LoRA run on the test and the development facts (most paraphrases, constant
                       rate), scored after each epoch of curve_exposures on trained and held-out
                       phrasings and on real-world questions the base model knew
  choose_checkpoint    the plan's rule on the development facts picks the checkpoint that stands for
                       "the fine-tune" (and says whether it reached fitness)
  knowledge            the base model closed book, the chosen checkpoint, RAG, DSF + RAG and the base
                       model with the gold document on the test facts' held-out phrasings
  paraphrase_variety   one paraphrase per fact at k5_exposures, beside the curve's checkpoint there
  injection_curves     the fine-tunes a reader could build from the documents alone (injection_arms:
                       as they are, rewritten, questions a rule writes), one run each, scored after
                       each of injection_exposures; the reader's arm chosen on development facts
  structured           strict JSON records: prompts, a grammar, LoRA fine-tunes per training size, the
                       one K4 tests chosen on development products (other worlds, never a test product)
  methods              the first n_method_facts test facts trained with every method at method_exposures
                       (LoRA with n_training_seeds seeds), each at its own chosen rate
  forgetting           each fine-tune's log-likelihood of general English text no fine-tune saw

Every scored condition is recorded per question under these names: "<model> held-out" and "<model>
trained paraphrase" (1 when the gold candidate has the highest log-likelihood), "<model> quality"
(the mean of the two), "<model> known" (a real-world question the base model knew, still ranked
right), "base + RAG", "DSF p<n> + RAG" and "base + gold document" (the fact's own document in the
prompt), "<model> generated" (every test fact's held-out question, answered by generation), "<JSON
condition>: json_valid | schema | fields", and "NLL: <model>" (the mean negative log-likelihood of
each segment of the general texts, a continuous outcome: lower is better). The curve's checkpoints
are "DSF p<n> e<exposures>"; the chosen one is also "DSF p<n>". An injection arm's checkpoints are
"DSF <arm> e<exposures>" (held-out, stored: its value where the arm's own text states it, held-out
generated, known), and the reader's chosen arm and checkpoint is also "DSF from documents".
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from .. import handover, metrics, models, prompts, prose, rag, report
from ..constrained import generate_json, json_schema, max_record_tokens
from ..corpus import injection
from ..corpus.benchmarks import load_nq_open
from ..corpus.kb import STRUCTURED_FIELDS
from ..corpus.known import ranked_questions
from ..costs import load_prices
from ..drift import rate_tolerance
from ..generation import Generation, generate
from ..plan import prose_terms, seed_tag, seeds_disagree, the_plan
from ..results import ChapterRun, Clock, Measured, judged_of, state_comparisons
from ..prose import StatedComparison, glue
from ..scoring import rank_candidates
from ..stats import mean_interval, score_kind, wilson_interval
from ..train import memory, tasks, units
from ..train.measure import release_memory
from ..verdict import difference_text, seed_verdicts_text
from .common import (checkpoint_ref, curve_run, drawn_facts, mean_outcomes, merge_seeds, record_seeds, seeded, start,
                     training_seeds)

CHAPTER = "03_finetune"
# Tokens of general text per forgetting outcome. The perplexity windows (512 tokens) give only two
# or three outcomes on the probe; 32-token segments give dozens while each still averages enough
# tokens that one rare word does not decide it. Neighbouring segments are not independent, so the
# forgetting comparison's interval is on the narrow side.
SEGMENT_TOKENS = 32
BASE = "base"
GOLD_DOCUMENT = "base + gold document"  # the outcome of the base model reading each fact's own document
# the knowledge table's rows read with a document in the prompt
RAG_ROW, DSF_RAG_ROW, GOLD_ROW = "base model + RAG (top-{k})", "DSF (chosen) + RAG", "base model + gold document"
CLOSED_ROW = "base model, closed book"  # the knowledge table's first row
LOOKALIKES = 3  # look-alike values ranked against each gold answer: chance is 1 in 4
JSON_SCORES = ("json_valid", "schema", "fields")  # the suffixes of the structured conditions' names
METHOD_LABELS = {"lora": "LoRA", "lora-attention": "attention-only LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}
# Drift tolerances of measurements on a model's log-likelihood: another CPU's BLAS moves a
# perplexity by about 1e-5 of itself, a retrained adapter's forgetting delta by well under a point.
PERPLEXITY_TOL = 0.01
FORGETTING_DELTA_TOL = 0.01
ARTIFACT_MB_TOL = 0.01  # peft's adapter config names the base model's folder: the cache path moves bytes
CURVE_COLUMNS = ("arm", "exposures", "train_tokens", "trained_acc", "heldout_acc", "known_acc", "seconds", "flops",
                 "dev_trained_acc", "dev_heldout_acc")
# measured where the verdicts are: generated answers' accuracy, the held-out accuracy with RAG's chunk in
# the prompt (does the fine-tune still read retrieved text), the mean general-text loss (nats per token)
PROBE_COLUMNS = ("heldout_generated", "with_rag_acc", "general_nll")


@dataclass
class ForgettingProbe:
    """A model's perplexity on the general text and the mean NLL of each segment of it."""

    perplexity: float
    segment_nll: dict  # "<text>, tokens a-b" -> mean negative log-likelihood of those tokens
    by_text: dict = field(default_factory=dict)  # text name -> perplexity
    label: str = ""  # whose probe: its outcomes are "NLL: <label>"
    per_seed: list = field(default_factory=list)  # a seeded arm's: each seed's segment NLL (segment_nll is their mean)

    @property
    def measured(self) -> "Measured":
        """Its per-segment NLL as the outcomes "NLL: <label>" (and each seed's, "NLL: <label> (seed k)")."""
        out = Measured()
        if self.per_seed:
            record_seeds(out, f"NLL: {self.label}", self.per_seed)
        else:
            out.record(f"NLL: {self.label}", self.segment_nll)
        return out


def seed_mean_probe(label: str, probes: list) -> "ForgettingProbe":
    """The probe of a seeded arm: each seed's per-segment NLL, their mean, the geometric mean of the
    seeds' perplexities (a mean of log-likelihoods) and the first seed's per-text perplexities."""
    mean = mean_outcomes([p.segment_nll for p in probes])
    return ForgettingProbe(math.exp(sum(math.log(p.perplexity) for p in probes) / len(probes)), mean, probes[0].by_text,
                           label, [p.segment_nll for p in probes])


@dataclass
class Chapter:
    """The chapter's set-up: parameters, results file, models, the facts, the real-world questions
    the base model knows, and the base model's forgetting probe. No step writes here."""

    params: object
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    lm: object
    embed_model: object
    kb: object
    facts: list
    dev_facts: list  # the sweep's and the checkpoint rule's facts, never test facts
    general: dict  # text name -> general English text (the forgetting probe)
    known: list = field(default_factory=list)  # corpus.known.RankedQuestion the base model ranks right
    base_probe: ForgettingProbe | None = None
    skipped: dict = field(default_factory=dict)  # method -> why it does not fit the device
    measured: Measured = field(default_factory=Measured)  # what setup measured: the known questions, the base probe

    @property
    def best_count(self) -> int:
        return max(self.params.paraphrase_counts)

    @property
    def n_facts(self) -> int:
        return len(self.facts)

    @property
    def method_facts(self) -> list:
        return self.facts[:self.params.n_method_facts]

    @property
    def format_facts(self) -> list:
        return self.facts[:self.params.n_format_facts]

    def summary(self) -> str:
        return (f"{self.lm.name}: {self.lm.n_params() / 1e6:.0f} M parameters, {self.lm.dtype}; {len(self.facts)} "
                f"test facts and {len(self.dev_facts)} development facts, {len(self.facts[0].train_texts)} "
                f"training paraphrases each; {len(self.known)} real-world questions the base model knows")


def setup(params) -> Chapter:
    """Seeds, threads and network policy; the model and the embedder; the test and development facts;
    the real-world questions the base model knows; the base model's forgetting probe."""
    folder, clock, lm, embed_model, kb = start(CHAPTER, params, embedder=True)
    facts, dev_facts = drawn_facts(kb, params)  # chapter 4 draws the same test facts
    general = tasks.general_texts(params.forgetting_chars)
    known, known_outcomes = known_questions(lm, params)
    base_probe = probe("base model", lm, general)
    ch = Chapter(params, clock, folder, lm, embed_model, kb, facts, dev_facts,
                 general, known=known, base_probe=base_probe, measured=Measured.merged(known_outcomes, base_probe.measured))
    ch.skipped = methods_that_do_not_fit(params, lm.device)
    for message in ch.skipped.values():
        print(message)
    return ch


EXAMPLE_TOKENS_MAX = 128  # a fact's training example with its chat template, padded: about 40-100 tokens


def methods_that_do_not_fit(params, device: str) -> dict[str, str]:
    """method -> why it is skipped, for the methods whose training would not fit the device's memory
    (estimated from the model's shape before any training; LoRA always runs: the chapter rests on it)."""
    spec = models.get_spec(params.model, "lm")
    if spec.shape is None:
        return {}
    dtype = models.dtype_name(models.select_dtype(device, params.dtype))
    tokens = params.train_batch_size * EXAMPLE_TOKENS_MAX
    available = memory.device_bytes(device)
    out = {}
    for method in params.methods:
        message = memory.fit_message(params.model, memory.Shape(*spec.shape), method, dtype, tokens, device, available)
        if message and method != "lora":
            out[method] = message
    return out


def known_questions(lm, params) -> tuple[list, Measured]:
    """The first n_known usable NQ-Open questions (corpus.known) that the base model ranks right closed
    book: facts it knew before any training, with their outcomes "base known" (1 for each, by
    construction); a fine-tune's "<model> known" says which it still ranks right. Empty when n_known
    is 0."""
    out = Measured()
    if not params.n_known:
        return [], out
    screened = ranked_questions(load_nq_open(), params.n_known, LOOKALIKES, params.seed)
    ranking = rank_known(lm, screened, "known (screen)")
    known = [q for q, right in zip(screened, ranking.correct) if right]
    if known:
        out.record(f"{BASE} known", {q.qid: 1 for q in known})
    return known, out


def rank_known(model_lm, questions: list, desc: str):
    return rank_candidates(model_lm, [tasks.dsf_messages(q.text) for q in questions],
                           [list(q.candidates) for q in questions], [q.gold for q in questions], desc=desc)


# ---------------------------------------------------------------------------------------------
# Per-question outcomes


def segment_means(token_nll: list[float], size: int = SEGMENT_TOKENS) -> dict[str, float]:
    """Mean NLL of consecutive segments of `size` predicted tokens, keyed by their token range; a
    short last segment joins the one before it, so no outcome rests on a handful of tokens."""
    if size < 1:
        raise ValueError(f"segment size must be at least 1 token, got {size}")
    if not token_nll:
        raise ValueError("no token log-likelihoods: the general text is too short to probe")
    bounds = list(range(0, len(token_nll), size))
    if len(bounds) > 1 and len(token_nll) - bounds[-1] < size // 2:
        bounds.pop()
    ends = bounds[1:] + [len(token_nll)]
    return {f"tokens {a}-{b - 1}": sum(token_nll[a:b]) / (b - a) for a, b in zip(bounds, ends)}


def probe(label: str, model_lm, general: dict) -> ForgettingProbe:
    """A model's forgetting probe: its perplexity on the general texts together (the headline figure),
    per text, and its per-segment NLL on each text (its outcomes "NLL: <label>")."""
    segments, total, count, by_text = {}, 0.0, 0, {}
    for text_name, text in general.items():
        ppl, token_nll = tasks.perplexity_probe(model_lm, text)
        by_text[text_name] = ppl
        total, count = total + sum(token_nll), count + len(token_nll)
        segments.update({f"{text_name}, {k}": v for k, v in segment_means(token_nll).items()})
    return ForgettingProbe(math.exp(total / count), segments, by_text, label)


def contains_outcomes(questions: list, texts: list[str], gen: Generation | None = None,
                      rows: list[int] | None = None) -> tuple[dict, dict]:
    """({qid: 1 or 0}, {qid: (prompt tokens, completion tokens)}) for answers paired with questions
    in order; `rows` says which rows of `gen` hold the token counts (default: the same positions)."""
    if len(questions) != len(texts):
        raise ValueError(f"{len(questions)} questions but {len(texts)} answers: they must pair up in order")
    scores, tokens = {}, {}
    for i, (q, text) in enumerate(zip(questions, texts)):
        if q.qid in scores:
            raise ValueError(f"question {q.qid!r} asked twice in one condition: outcomes are per question")
        scores[q.qid] = metrics.contains(text, q.answers)
        if gen is not None:
            j = i if rows is None else rows[i]
            tokens[q.qid] = (gen.prompt_tokens[j], gen.completion_tokens[j])
    return scores, tokens


def candidates(ch: Chapter, q) -> tuple[list[str], int]:
    """The fact's gold value and LOOKALIKES look-alike values of its attribute, in a fixed order."""
    return ch.kb.candidates(q, LOOKALIKES, ch.params.seed)


def rank_facts(ch: Chapter, model_lm, conversations: list, facts: list, desc: str):
    """A model's candidate ranking for each fact, given one conversation per fact."""
    pairs = [candidates(ch, q) for q in facts]
    return rank_candidates(model_lm, conversations, [c for c, _ in pairs], [g for _, g in pairs], desc=desc)


def closed_book(ch: Chapter, into: Measured | None, model_lm, name: str | None,
                facts: list | None = None) -> tuple[dict, dict]:
    """A model's closed-book outcomes on the held-out and on the first trained paraphrase of each fact
    (default: the test facts), by candidate log-likelihood: ({qid: 1/0} held-out, {qid: 1/0} trained).
    With a name they are kept in `into` (the calling step's record) as "<name> held-out", "<name>
    trained paraphrase" and "<name> quality" (the mean of the two per fact)."""
    facts = ch.facts if facts is None else facts
    qids = [q.qid for q in facts]
    texts = [q.test_text for q in facts] + [q.train_texts[0] for q in facts]
    ranking = rank_facts(ch, model_lm, [tasks.dsf_messages(t) for t in texts], facts + facts, name or "development")
    n = len(facts)
    held = dict(zip(qids, ranking.correct[:n]))
    seen = dict(zip(qids, ranking.correct[n:]))
    if name:
        tokens = [(t, 0) for t in ranking.prompt_tokens]
        into.record(f"{name} held-out", held, tokens=dict(zip(qids, tokens[:n])))
        into.record(f"{name} trained paraphrase", seen, tokens=dict(zip(qids, tokens[n:])))
        into.record(f"{name} quality", {q: (held[q] + seen[q]) / 2 for q in held})
    return held, seen


def shared_n(table: pd.DataFrame) -> int:
    """The number of questions every row of a table asked (its `n` column holds one value)."""
    values = set(table["n"])
    if len(values) != 1:
        raise ValueError(f"the rows of this table asked different numbers of questions: {sorted(values)}")
    return int(values.pop())


def share(outcomes: dict) -> float:
    return sum(outcomes.values()) / len(outcomes)


def generated(ch: Chapter, into: Measured, model_lm, name: str, conversations: list) -> list[str]:
    """Generated answers to the test facts' conversations, kept in `into` as "<name> generated" (1 when
    the answer contains the gold): what a user would read, beside the ranking's verdict."""
    p, facts = ch.params, ch.facts
    gen = generate(model_lm, conversations, p.max_new_tokens, p.batch_size, desc=f"{name} (generated)")
    texts = [rag.strip_citations(t) for t in gen.texts]
    scores, tokens = contains_outcomes(facts, texts, gen)
    into.record(f"{name} generated", scores, tokens=tokens)
    return texts


def dsf_name(count: int, exposures: int | None = None) -> str:
    """The outcomes' name of the DSF fine-tune on `count` paraphrases per fact (the chosen checkpoint),
    or of its checkpoint after `exposures` exposures per fact."""
    return f"DSF p{count}" + (f" e{exposures}" if exposures is not None else "")


def method_name(method: str, seed: int = 0) -> str:
    """The outcomes' name of a method's run on the method facts (a LoRA seed other than 0 is named)."""
    return f"methods {method}" + (f" seed {seed}" if seed else "")


def method_label(method: str) -> str:
    """A method's fine-tune in the forgetting table (its outcomes: "NLL: <label>")."""
    return f"methods, {METHOD_LABELS[method]}"


DSF_LABEL = "DSF, LoRA"  # the chosen checkpoint in the forgetting table


def answering(result):
    """A fine-tune ready to answer: a LoRA adapter on an fp32 base merged into the base weights
    (`train.merged`: the same function up to float rounding, and cheaper to run), as chapters 4 and 5
    answer with theirs; QLoRA, bf16 and full fine-tunes as they are. The adapter itself was saved when
    it was trained, and its costs measured."""
    result.merge()
    return result


# ---------------------------------------------------------------------------------------------
# Learning rates: one rule for every method, on development facts


def sweep_lrs(params, method: str) -> list[float]:
    middle = params.full_lr if method == "full" else params.lora_lr
    return [float(f"{middle * f:.3g}") for f in params.lr_factors]


def learning_rate_sweep(ch: Chapter) -> pd.DataFrame:
    """Each method of sweep_methods trained on the development facts (most paraphrases,
    sweep_exposures per fact, constant rate) at each of its rates and scored on their held-out
    paraphrases; one row per (method, rate). pick_lrs applies the rule."""
    p, facts, rows = ch.params, ch.dev_facts, []
    with ch.clock.stage("lr_sweep"):
        for method in [m for m in p.sweep_methods if m not in ch.skipped]:
            for lr in sweep_lrs(p, method):
                fit = answering(tasks.train_dsf(p, facts, ch.best_count, p.sweep_exposures, lr=lr, method=method,
                                                label=f"sweep-{method}"))
                ranking = rank_facts(ch, fit.lm, [tasks.dsf_messages(q.test_text) for q in facts], facts,
                                     f"sweep {method} lr {lr:g}")
                rows.append({"method": method, "lr": lr, "dev_heldout": ranking.accuracy,
                             "dev_margin": sum(ranking.margins) / len(facts), "train_s": fit.metrics["train_s"]})
                del fit
                release_memory()
    return pd.DataFrame(rows, columns=["method", "lr", "dev_heldout", "dev_margin", "train_s"]).set_index(["method", "lr"])


def pick_lrs(sweep: pd.DataFrame, methods: list, params) -> dict[str, float]:
    """The rule, the same for every method: the learning rate with the best development held-out
    accuracy, ties to the larger mean gold margin (then the smaller rate). A method without a sweep
    of its own takes LoRA's rate (the same adapters), except full fine-tuning, whose rates lie an
    order of magnitude lower (Biderman et al.): it takes the profile's full_lr. Without any sweep,
    LoRA takes the profile's lora_lr (set on development facts before the run)."""
    chosen = {}
    for method, part in sweep.reset_index().groupby("method", sort=False):
        best = part.assign(neg_lr=-part.lr).sort_values(["dev_heldout", "dev_margin", "neg_lr"]).iloc[-1]
        chosen[method] = float(best.lr)
    lora = chosen.get("lora", params.lora_lr)
    return {m: chosen.get(m, params.full_lr if m == "full" else lora) for m in methods}


def mark_chosen(sweep: pd.DataFrame, lrs: dict) -> pd.DataFrame:
    """The sweep with a `chosen` column (the rate pick_lrs kept for each method)."""
    table = sweep.reset_index()
    table["chosen"] = [lrs.get(m) == lr for m, lr in zip(table.method, table.lr)]
    return table.set_index(["method", "lr"])


def lr_edge_sentence(sweep: pd.DataFrame) -> str:
    """The methods whose chosen rate is the largest or smallest their sweep tried: their best rate
    may lie beyond the grid, which the reader should know before comparing methods."""
    if sweep.empty:
        return ("This profile sweeps no rate (its sweep_methods is empty, for the chapter's time): every method "
                "trains at the rate the profile sets, chosen on development facts before the run (the profile's "
                "comments give that evidence). Setting sweep_methods runs the sweep here.")
    edges, single = {"largest": [], "smallest": []}, []
    for method, part in sweep.reset_index().groupby("method", sort=False):
        chosen = part.lr[part.chosen].iloc[0]
        if len(part) == 1:
            single.append(METHOD_LABELS[method])
        elif chosen in (part.lr.max(), part.lr.min()):
            edges["largest" if chosen == part.lr.max() else "smallest"].append(METHOD_LABELS[method])
    said = [f"the {side} rate tried for {report.join_words(methods)}" for side, methods in edges.items() if methods]
    out = []
    if said:
        out.append(f"The chosen rate is {' and '.join(said)}: a rate beyond it was not tried, so a method may "
                   "train below its best here (the profile's lr_factors widens the grid).")
    if single:
        out.append(f"{report.join_words(single)} tried one rate only, so nothing here says where the best rate lies.")
    return " ".join(out) or "Every chosen rate lies inside the rates its sweep tried."


def rates_table(sweep: pd.DataFrame, lrs: dict, params) -> pd.DataFrame:
    """Each method's learning rate and where it came from: the sweep on development facts, LoRA's
    choice, or the profile (set on development facts before the run)."""
    swept = set(sweep.reset_index().method) if not sweep.empty else set()
    def source(m):
        if m in swept:
            return "swept on the development facts"
        if m != "full" and "lora" in swept:
            return "LoRA's choice (the same adapters)"
        return f"the profile's {'full_lr' if m == 'full' else 'lora_lr'}, set on development facts"
    return pd.DataFrame([{"method": METHOD_LABELS[m], "lr": lr, "from": source(m)} for m, lr in lrs.items()]).set_index("method")


def sweep_style(table: pd.DataFrame):
    return table.style.format({"dev_heldout": "{:.0%}", "dev_margin": "{:+.2f}", "train_s": "{:.0f} s"})


# ---------------------------------------------------------------------------------------------
# Knowledge: the acquisition curve, the chosen checkpoint, RAG


@dataclass
class Curve:
    """The knowledge curve: one row per checkpoint (CURVE_COLUMNS), each checkpoint by its exposures
    per fact (a unit checkpoint, units.Trained.ref), the rate it trained at and the run's training
    metrics."""

    table: pd.DataFrame
    folders: dict
    lr: float
    train: dict
    measured: Measured = field(default_factory=Measured)  # every checkpoint's outcomes


def knowledge_curve(ch: Chapter, lr: float) -> Curve:
    """One LoRA run on the test and the development facts (curve_run), scored after each checkpoint:
    the test facts' trained and held-out phrasings (recorded as "DSF p<n> e<exposures> ..."), the
    development facts' (for the checkpoint rule), and the known real-world questions; with the
    training seconds and FLOPs up to that checkpoint."""
    p, count, measured = ch.params, ch.best_count, Measured()
    with ch.clock.stage("dsf_curve"):
        result = curve_run(p, ch.facts, ch.dev_facts, lr)
        rows, folders = [], {}
        for exposures in p.curve_exposures:
            folders[exposures] = checkpoint_ref(result, exposures, count)
            model_lm = result.at(exposures // count)
            name = dsf_name(count, exposures)
            held, seen = closed_book(ch, measured, model_lm, name)
            dev_held, dev_seen = closed_book(ch, None, model_lm, None, ch.dev_facts)
            known = float("nan")
            if ch.known:
                right = rank_known(model_lm, ch.known, f"{name} known").correct
                measured.record(f"{name} known", dict(zip([q.qid for q in ch.known], right)))
                known = sum(right) / len(right)
            cost = result.metrics["snapshots"][str(exposures // count)]
            rows.append({"arm": GOLD_ARM, "exposures": exposures, "train_tokens": cost["train_tokens"],
                         "trained_acc": share(seen), "heldout_acc": share(held), "known_acc": known,
                         "seconds": cost["train_s"], "flops": cost["flops"], "dev_trained_acc": share(dev_seen),
                         "dev_heldout_acc": share(dev_held)})
            del model_lm
            release_memory()
    metrics_ = {k: v for k, v in result.metrics.items() if k != "snapshots"}
    return Curve(pd.DataFrame(rows, columns=list(CURVE_COLUMNS)), folders, lr, metrics_, measured)


@dataclass
class Checkpoint:
    """The checkpoint that stands for the fine-tune, chosen on the development facts."""

    exposures: int
    reached: bool  # the plan's fitness rule holds on the development facts there
    converged: int  # the curve's last checkpoint, reported beside it


def choose_checkpoint(curve: pd.DataFrame, rule: dict, n_dev: int) -> Checkpoint:
    """The plan's rule (fitness.dsf.checkpoint), on development facts only: the earliest checkpoint at
    which the development facts' trained phrasings reach dev_trained_min and their held-out accuracy
    has stopped improving (within heldout_slack facts of the best the curve reaches). Where no
    checkpoint reaches the bar, the best held-out checkpoint stands, marked unfit."""
    slack = rule["heldout_slack"] / n_dev
    best = curve.dev_heldout_acc.max()
    fit = curve[(curve.dev_trained_acc >= rule["dev_trained_min"]) & (curve.dev_heldout_acc >= best - slack - 1e-9)]
    last = int(curve.exposures.iloc[-1])
    if len(fit):
        return Checkpoint(int(fit.exposures.iloc[0]), True, last)
    return Checkpoint(int(curve.exposures[curve.dev_heldout_acc.idxmax()]), False, last)


def fit_at(curve: pd.DataFrame, exposures: int, rule: dict, n_dev: int) -> bool:
    """Whether a curve meets the checkpoint rule's bar at a given checkpoint: its development facts'
    trained phrasings at dev_trained_min or above and their held-out accuracy within heldout_slack facts
    of the best the curve reaches (a seed's own fitness at the checkpoint its arm's seed mean chose)."""
    row = curve.set_index("exposures").loc[exposures]
    best = curve.dev_heldout_acc.max()
    return bool(row.dev_trained_acc >= rule["dev_trained_min"] and row.dev_heldout_acc >= best - rule["heldout_slack"] / n_dev - 1e-9)


def base_point(found: Knowledge, known: list) -> dict:
    """The base model's place on the curve: its closed-book accuracies, and every known question
    right (that is how they were chosen)."""
    row = found.table.loc[CLOSED_ROW]
    return {"trained_acc": row.trained_paraphrase, "heldout_acc": row.held_out, "known_acc": 1.0 if known else float("nan")}


def curve_style(table: pd.DataFrame):
    return table.style.format({"trained_acc": "{:.0%}", "heldout_acc": "{:.0%}", "known_acc": "{:.0%}",
                               "heldout_generated": "{:.0%}", "with_rag_acc": "{:.0%}", "general_nll": "{:.2f}",
                               "train_tokens": "{:,.0f}",
                               "seconds": "{:.0f} s", "flops": "{:.2e}", "dev_trained_acc": "{:.0%}",
                               "dev_heldout_acc": "{:.0%}"}, na_rep="-")


@dataclass
class Knowledge:
    """The knowledge table (one row per condition on the test facts' held-out phrasings, RAG_ROW,
    DSF_RAG_ROW and GOLD_ROW among them), the chosen fine-tune ready to answer, and the RAG
    conversations both models read."""

    table: pd.DataFrame
    dsf_lm: object
    rag_conversations: list
    rag_recall: float  # share of test facts whose retrieved chunks hold the gold value
    measured: Measured = field(default_factory=Measured)  # every row's outcomes, and the hand-over to chapters 4 and 5

    def held_out(self, label: str) -> float:
        return float(self.table.loc[label, "held_out"])


def knowledge(ch: Chapter, curve: Curve, chosen: Checkpoint, found: "Study | None" = None,
              retrieval: tuple | None = None) -> Knowledge:
    """The base model closed book; the chosen checkpoint (its outcomes copied to "DSF p<n> ..."), and
    the last one (converged); RAG with the base and with the chosen fine-tune, and the base model
    given each fact's own document (what RAG would score if retrieval never missed), on the held-out
    questions, ranked by candidate log-likelihood. Hands the chosen adapter to chapters 4 and 5
    (artifacts["dsf_adapter"], tables["dsf_facts"])."""
    p, clock, count, measured = ch.params, ch.clock, ch.best_count, Measured()
    held, seen = closed_book(ch, measured, ch.lm, BASE)
    rows = [{"condition": CLOSED_ROW, "held_out": share(held), "trained_paraphrase": share(seen)}]
    name = dsf_name(count)
    parts = ("held-out", "trained paraphrase", "quality", "known")
    if found is not None:  # a seeded draw: each seed's outcomes, their mean, RAG's row and the generated answers
        parts += ("+ RAG", "held-out generated")
    tags = [""] + ([seed_tag(k) for k in range(1, len(found.choices[GOLD].runs) + 1)] if found is not None else [])
    for part in parts:
        source = f"{dsf_name(count, chosen.exposures)} {part}"
        target = f"{name} {'generated' if part == 'held-out generated' else part}"
        for tag in tags:
            if source + tag in curve.measured.outcomes:
                measured.record(target + tag, curve.measured.outcomes[source + tag],
                                tokens=curve.measured.outcome_tokens.get(source + tag))
    # the last checkpoint gets a row of its own only where it is not the chosen one
    points = [(dsf_row_label(count, chosen.exposures, "chosen" if chosen.converged != chosen.exposures else "both"),
               chosen.exposures)]
    if chosen.converged != chosen.exposures:
        points.append((dsf_row_label(count, chosen.converged, "last"), chosen.converged))
    for label, exposures in points:
        row = curve.table.set_index("exposures").loc[exposures]
        rows.append({"condition": label, "held_out": row.heldout_acc, "trained_paraphrase": row.trained_acc,
                     "exposures": exposures, "train_s": row.seconds})
    measured.update(handover.give_dsf(ch.facts, curve.folders[chosen.exposures]))
    if found is not None:
        measured.update(handover.give_seeds(found.refs(GOLD), found.refs(found.reader) if found.reader else [], found.reader))
    dsf_lm = units.model(curve.folders[chosen.exposures])
    conversations, recall, gold = retrieval or retrieved(ch)
    qids = [q.qid for q in ch.facts]
    readers = ((RAG_ROW.format(k=p.rag_top_k), "base + RAG", ch.lm, conversations), (DSF_RAG_ROW, f"{name} + RAG", dsf_lm, conversations),
               (GOLD_ROW, GOLD_DOCUMENT, ch.lm, gold))
    with clock.stage("rag"):
        for label, outcome, model_lm, convs in readers:
            if outcome in measured.outcomes:  # a seeded draw's DSF + RAG: the seed mean the study measured
                rows.append({"condition": label, "held_out": share(measured.outcomes[outcome])})
                continue
            ranking = rank_facts(ch, model_lm, convs, ch.facts, outcome)
            measured.record(outcome, ranking.outcomes(qids), tokens={q: (t, 0) for q, t in zip(qids, ranking.prompt_tokens)})
            rows.append({"condition": label, "held_out": ranking.accuracy})
    table = pd.DataFrame(rows).set_index("condition")
    table.insert(0, "n", ch.n_facts)  # every row asks the same test facts
    return Knowledge(table, dsf_lm, conversations, recall, measured)


def retrieved(ch: Chapter) -> tuple[list, float, list]:
    """Chapter 3's retrieval for the test facts' held-out questions (the knowledge base's pages in
    256-token chunks, hybrid search, rag_top_k chunks): (the RAG conversations, the share of facts
    whose chunks hold the gold value, the conversations with each fact's own document instead: as if
    retrieval never missed)."""
    chroma_folder = ch.folder / "chroma" / CHAPTER
    shutil.rmtree(chroma_folder, ignore_errors=True)
    store = rag.ChunkStore("kb-256", path=chroma_folder, embed_model=ch.embed_model, chunk_size=256, chunk_overlap=16)
    store.ingest(rag.kb_pages(ch.kb, 8))
    ranked = rag.Retriever(store, ch.embed_model).search([q.test_text for q in ch.facts], ch.params.rag_top_k, "hybrid")
    recall = sum(any(metrics.contains(h.text, q.answers) for h in hits) for q, hits in zip(ch.facts, ranked)) / len(ch.facts)
    conversations = [rag.rag_messages(q.test_text, hits) for q, hits in zip(ch.facts, ranked)]
    gold = [rag.cited_messages(q.test_text, [rag.document_text(ch.kb.doc(q.doc_ids[0]))]) for q in ch.facts]
    return conversations, recall, gold


def dsf_row_label(count: int, exposures: int, which: str = "") -> str:
    """A DSF row of the knowledge table."""
    what = {"chosen": ", chosen", "last": ", last checkpoint", "both": ", chosen (the last checkpoint)"}.get(which, "")
    return f"DSF, {count} paraphrase{'s' if count > 1 else ''} per fact, {exposures} exposures{what}"


# ---------------------------------------------------------------------------------------------
# Knowledge injection as a reader would do it: fine-tuning on the documents alone


GOLD_ARM = "gold questions (upper bound)"  # the curve above: questions about every test fact, in their own templates
READER_ARMS = injection.ARM_LABELS
READER = "DSF from documents"  # the reader's fine-tune: the arm and checkpoint the development facts chose


def arm_name(arm: str, exposures: int | None = None) -> str:
    """The outcomes' name of an injection arm ("DSF documents"), or of its checkpoint ("DSF documents e6")."""
    return f"DSF {arm}" + (f" e{exposures}" if exposures is not None else "")


def stored(ch: Chapter, model_lm, arm: str, facts: list) -> dict:
    """{qid: 1 or 0}: whether the model ranks each fact's value first where the arm's own training
    text states it: its document (documents) or the document's first rewrite (rewritten), recited from
    the title up to the value, or the rule's cloze question on the fact's sentence (generated). An arm
    that never saw a question about the fact has stored it when it continues its own text."""
    pairs = [candidates(ch, q) for q in facts]
    gold = [g for _, g in pairs]
    if arm == "generated":
        conversations = [tasks.dsf_messages(injection.fact_cloze(ch.kb, q)) for q in facts]
        ranking = rank_candidates(model_lm, conversations, [c for c, _ in pairs], gold, desc=f"{arm} stored")
    else:
        variant = None if arm == "documents" else 0
        conversations = [tasks.recite_messages(ch.kb.doc(q.doc_ids[0])) for q in facts]
        # the prefix ends before the value's space: each candidate is scored as the text's next word
        ranking = rank_candidates(model_lm, conversations, [[" " + c for c in cands] for cands, _ in pairs], gold,
                                  desc=f"{arm} stored",
                                  reply_prefixes=[injection.statement_prefix(ch.kb, q, variant) for q in facts])
    return dict(zip([q.qid for q in facts], ranking.correct))


def held_out(ch: Chapter, model_lm, facts: list, desc: str) -> dict:
    """{qid: 1 or 0}: the model's closed-book ranking of each fact's held-out question alone (an arm
    that trained on no question has no trained phrasing to rank beside it, as closed_book does)."""
    ranking = rank_facts(ch, model_lm, [tasks.dsf_messages(q.test_text) for q in facts], facts, desc)
    return ranking.outcomes([q.qid for q in facts])


@dataclass
class Injection:
    """The injection arms' curves (one row per arm and checkpoint, CURVE_COLUMNS and the generated
    and general-text columns), each arm's checkpoint chosen by the plan's rule on the development
    facts, and the reader's fine-tune: the arm whose chosen checkpoint answers the most held-out
    development questions (ties: fewer training tokens). Empty where the profile runs no arm."""

    table: pd.DataFrame
    chosen: dict  # arm -> Checkpoint
    reader: str | None = None  # the arm that stands for the reader's fine-tune
    measured: Measured = field(default_factory=Measured)  # every arm's checkpoints' outcomes, the reader's copied


def no_injection() -> Injection:
    """The injection result of a profile that runs no arm: an empty table with the curve's columns."""
    return Injection(pd.DataFrame(columns=list(CURVE_COLUMNS) + list(PROBE_COLUMNS)), {})


def generated_share(ch: Chapter, into: Measured, model_lm, name: str) -> float:
    """generated() on every test fact's held-out question, closed book ("<name> generated", kept in
    `into`): the share whose answer contains the gold."""
    generated(ch, into, model_lm, name, [tasks.dsf_messages(q.test_text) for q in ch.facts])
    return share(into.outcomes[f"{name} generated"])


def injection_curves(ch: Chapter, lr: float, rag_conversations: list) -> Injection:
    """Each arm of injection_arms: one LoRA run at the curve's rate on the documents that hold the
    test and development facts (tasks.injection_examples), scored after each of injection_exposures:
    the test facts' held-out questions ranked ("DSF <arm> e<n> held-out"), with RAG's conversations
    ("... + RAG") and generated, their values where the arm's text states them ("... stored", the
    arm's trained phrasing), the known questions, the general-text loss, and the development facts'
    held-out and stored (the checkpoint rule's)."""
    p, clock, measured = ch.params, ch.clock, Measured()
    rule = the_plan().fitness["injection"]["checkpoint"]
    rows, chosen = [], {}
    for arm in p.injection_arms:
        per = tasks.INJECTION_ARMS[arm]
        cfg = tasks.injection_config(p, arm, max(p.injection_exposures), lr)
        with clock.stage(f"injection_{arm}"):
            result = units.train(p.model, tasks.injection_examples(ch.kb, ch.facts + ch.dev_facts, arm), cfg,
                                 label=f"inject-{arm}", snapshots=tuple(e // per for e in p.injection_exposures))
            arm_rows = []
            for exposures in p.injection_exposures:
                model_lm = result.at(exposures // per)
                name = arm_name(arm, exposures)
                held = held_out(ch, model_lm, ch.facts, name)
                measured.record(f"{name} held-out", held)
                seen = stored(ch, model_lm, arm, ch.facts)
                measured.record(f"{name} stored", seen)
                with_rag = rank_facts(ch, model_lm, rag_conversations, ch.facts, f"{name} + RAG")
                measured.record(f"{name} + RAG", with_rag.outcomes([q.qid for q in ch.facts]))
                dev_held = held_out(ch, model_lm, ch.dev_facts, "development")
                known = float("nan")
                if ch.known:
                    right = rank_known(model_lm, ch.known, f"{name} known").correct
                    measured.record(f"{name} known", dict(zip([q.qid for q in ch.known], right)))
                    known = sum(right) / len(right)
                cost = result.metrics["snapshots"][str(exposures // per)]
                row = {"arm": READER_ARMS[arm], "exposures": exposures, "train_tokens": cost["train_tokens"],
                       "seconds": cost["train_s"], "flops": cost["flops"], "trained_acc": share(seen),
                       "heldout_acc": share(held), "known_acc": known,
                       "dev_trained_acc": share(stored(ch, model_lm, arm, ch.dev_facts)),
                       "dev_heldout_acc": share(dev_held),
                       "heldout_generated": generated_share(ch, measured, model_lm, f"{name} held-out"),
                       "with_rag_acc": with_rag.accuracy}
                forgetting = probe(name, model_lm, ch.general)
                arm_rows.append({**row, "general_nll": math.log(forgetting.perplexity)})
                measured.update(forgetting.measured)
                del model_lm
                release_memory()
        table = pd.DataFrame(arm_rows)
        chosen[arm] = choose_checkpoint(table, rule, len(ch.dev_facts))
        rows += arm_rows
    if not chosen:
        return no_injection()
    table = pd.DataFrame(rows)
    reader = choose_reader(table, chosen)
    source = arm_name(reader, chosen[reader].exposures)
    for part in ("held-out", "stored", "held-out generated", "known"):
        if f"{source} {part}" in measured.outcomes:
            measured.record(f"{READER} {part}", measured.outcomes[f"{source} {part}"],
                            tokens=measured.outcome_tokens.get(f"{source} {part}"))
    return Injection(table, chosen, reader, measured)


def choose_reader(table: pd.DataFrame, chosen: dict) -> str:
    """The arm that stands for the reader's fine-tune: the one whose chosen checkpoint answers the
    most held-out development questions, ties to fewer training tokens (then to the arm run first)."""
    def score(arm):
        row = table[(table.arm == READER_ARMS[arm]) & (table.exposures == chosen[arm].exposures)].iloc[0]
        return (-row.dev_heldout_acc, row.train_tokens)

    return min(chosen, key=score)


def curve_table(curve: Curve, chosen: Checkpoint, injected: Injection, generated_share: float, with_rag: float,
                dsf_probe: ForgettingProbe | None) -> pd.DataFrame:
    """The knowledge curve of every arm, one row per arm and checkpoint: the gold-questions curve (its
    generated answers, accuracy with RAG (`with_rag`) and general-text loss measured at the chosen
    checkpoint, where its verdicts are; `generated_share` is NaN where the generated answers did not
    cover every test fact) and the injection arms' (measured at each checkpoint)."""
    gold = curve.table.copy()
    at = gold.exposures == chosen.exposures
    gold["heldout_generated"] = [generated_share if a else float("nan") for a in at]
    gold["with_rag_acc"] = [with_rag if a else float("nan") for a in at]
    gold["general_nll"] = [math.log(dsf_probe.perplexity) if a and dsf_probe else float("nan") for a in at]
    return pd.concat([gold, injected.table], ignore_index=True)[list(CURVE_COLUMNS) + list(PROBE_COLUMNS)]


# ---------------------------------------------------------------------------------------------
# The knowledge study (a draw with study_lrs, the plan's `study` and `seeds`): every arm, the gold
# questions' among them, at every rate at its first seed, then at its chosen rate with every seed


GOLD = "gold"  # the study's name for the curve's arm: gold questions about every fact (an upper bound)
STUDY_COLUMNS = ("arm", "lr", "seed", "exposures", "train_tokens", "seconds", "flops", "dev_trained_acc",
                 "dev_heldout_acc", "trained_acc", "heldout_acc", "heldout_generated", "with_rag_acc", "known_acc",
                 "general_nll")


def study_arms(params) -> list[str]:
    return [GOLD, *params.injection_arms]


def arm_exposures(params, arm: str) -> list[int]:
    """The checkpoints an arm is scored at, in exposures per fact."""
    if arm == GOLD:
        return list(params.curve_exposures)
    return list(params.arm_exposures.get(arm) or params.injection_exposures)


def per_epoch(ch: Chapter, arm: str) -> int:
    """Exposures per fact one epoch of the arm gives."""
    return ch.best_count if arm == GOLD else tasks.INJECTION_ARMS[arm]


def checkpoint_name(arm: str, exposures: int, count: int) -> str:
    """A study checkpoint's outcomes' name: "DSF p3 e12" (gold) or "DSF generated e12"."""
    return dsf_name(count, exposures) if arm == GOLD else arm_name(arm, exposures)


def train_arm(ch: Chapter, arm: str, lr: float, seed: int):
    """One run of an arm on the documents that hold the test and development facts (gold: the gold
    questions about their facts), a snapshot at each of its checkpoints: a unit."""
    p, exposures, per = ch.params, arm_exposures(ch.params, arm), per_epoch(ch, arm)
    snapshots = tuple(e // per for e in exposures)
    if arm == GOLD:
        return tasks.train_dsf(p, ch.facts + ch.dev_facts, per, max(exposures), lr=lr, label=f"dsf-p{per}", seed=seed,
                               snapshots=snapshots)
    cfg = replace(tasks.injection_config(p, arm, max(exposures), lr), seed=seed)
    return units.train(p.model, tasks.injection_examples(ch.kb, ch.facts + ch.dev_facts, arm), cfg, label=f"inject-{arm}",
                       snapshots=snapshots)


def development(ch: Chapter, arm: str, model_lm) -> tuple[dict, dict]:
    """({qid: 1/0} held-out, {qid: 1/0} trained phrasing) on the development facts: the gold arm's
    trained question, another arm's own text's statement of the fact (stored)."""
    if arm == GOLD:
        return closed_book(ch, None, model_lm, None, ch.dev_facts)
    return held_out(ch, model_lm, ch.dev_facts, "development"), stored(ch, model_lm, arm, ch.dev_facts)


@dataclass
class ArmRun:
    """One run of an arm: its rate, seed, unit and one row per checkpoint (development columns; the
    test facts' where it was scored on them)."""

    arm: str
    lr: float
    seed: int
    result: object
    rows: list


def run_arm(ch: Chapter, arm: str, lr: float, seed: int) -> ArmRun:
    """An arm's run at one rate and seed, scored on the development facts at each checkpoint."""
    p, per, rows = ch.params, per_epoch(ch, arm), []
    with ch.clock.stage(f"study_{arm}"):
        result = train_arm(ch, arm, lr, seed)
        for exposures in arm_exposures(p, arm):
            model_lm = result.at(exposures // per)
            held, seen = development(ch, arm, model_lm)
            cost = result.metrics["snapshots"][str(exposures // per)]
            rows.append({"arm": arm, "lr": lr, "seed": seed, "exposures": exposures, "train_tokens": cost["train_tokens"],
                         "seconds": cost["train_s"], "flops": cost["flops"], "dev_trained_acc": share(seen),
                         "dev_heldout_acc": share(held), "dev_held": held, "dev_seen": seen})
            del model_lm
            release_memory()
    return ArmRun(arm, lr, seed, result, rows)


def choose_rate(runs: list[ArmRun], rule: dict, n_dev: int) -> float:
    """The plan's rate rule at the first seed: each rate's checkpoint by the arm's checkpoint rule on
    its development facts; a fit one before an unfit one, then the most held-out development questions
    answered there, then fewer training tokens, then the smaller rate."""
    def key(arm_run):
        table = pd.DataFrame(arm_run.rows)
        cp = choose_checkpoint(table, rule, n_dev)
        row = table.set_index("exposures").loc[cp.exposures]
        return (not cp.reached, -row.dev_heldout_acc, row.train_tokens, arm_run.lr)

    return min(runs, key=key).lr


def seed_mean_curve(runs: list[ArmRun]) -> pd.DataFrame:
    """The development columns at each checkpoint, the mean over the runs' seeds (and their training
    cost, the mean too): what the checkpoint rule reads at the chosen rate."""
    table = pd.DataFrame([r for arm_run in runs for r in arm_run.rows])
    return table.groupby("exposures", sort=True)[["dev_trained_acc", "dev_heldout_acc", "train_tokens", "seconds", "flops"]].mean().reset_index()


def score_test(ch: Chapter, arm: str, model_lm, name: str, rag_conversations: list) -> tuple[dict, Measured]:
    """A checkpoint of one seed on the test facts: the held-out questions ranked (closed book, and with
    chapter 3's retrieved chunk) and answered by generation, the arm's trained phrasing, the known
    questions and the general-text loss. ({column: value}, its outcomes under `name`)."""
    out = Measured()
    if arm == GOLD:
        held, seen = closed_book(ch, out, model_lm, name)
        part = "trained paraphrase"
    else:
        held, seen = held_out(ch, model_lm, ch.facts, name), stored(ch, model_lm, arm, ch.facts)
        out.record(f"{name} held-out", held)
        out.record(f"{name} stored", seen)
        part = "stored"
    with_rag = rank_facts(ch, model_lm, rag_conversations, ch.facts, f"{name} + RAG")
    out.record(f"{name} + RAG", with_rag.outcomes([q.qid for q in ch.facts]))
    generated(ch, out, model_lm, f"{name} held-out", [tasks.dsf_messages(q.test_text) for q in ch.facts])
    known = float("nan")
    if ch.known:
        right = rank_known(model_lm, ch.known, f"{name} known").correct
        out.record(f"{name} known", dict(zip([q.qid for q in ch.known], right)))
        known = sum(right) / len(right)
    forgetting = probe(name, model_lm, ch.general)
    out.update(forgetting.measured)
    row = {"trained_acc": share(seen), "heldout_acc": share(held), "known_acc": known, "with_rag_acc": with_rag.accuracy,
           "heldout_generated": share(out.outcomes[f"{name} held-out generated"]),
           "general_nll": math.log(forgetting.perplexity), "trained_part": part}
    return row, out


@dataclass
class ArmChoice:
    """An arm's chosen rate and checkpoint (on development facts), and its seeds' runs at that rate."""

    arm: str
    lr: float
    checkpoint: Checkpoint
    runs: list  # ArmRun per seed at the chosen rate, the first seed's first
    grid: list  # ArmRun per rate at the first seed
    per: int  # exposures per fact of one epoch


@dataclass
class Study:
    """The knowledge study: one row per arm, rate, seed and checkpoint (STUDY_COLUMNS; the test
    columns where the run was scored on test facts: the chosen rate's seeds), each arm's choice, the
    reader's arm, and every outcome (per seed and at the seed mean)."""

    table: pd.DataFrame
    choices: dict  # arm -> ArmChoice
    reader: str | None
    measured: Measured = field(default_factory=Measured)

    def refs(self, arm: str) -> list[str]:
        """The arm's chosen checkpoint in each seed's run, as unit references (a hand-over)."""
        c = self.choices[arm]
        return [arm_run.result.ref(c.checkpoint.exposures // c.per) for arm_run in c.runs]


def study_injection(found: "Study") -> Injection:
    """The study's injection arms as chapter 3's injection section: one row per arm and checkpoint at
    its chosen rate (the seed mean), each arm's chosen checkpoint, the reader's arm, their outcomes
    (each seed's and the mean, the reader's copied as "DSF from documents ...")."""
    readers = [a for a in found.choices if a != GOLD]
    if not readers:
        return no_injection()
    rows = []
    for arm in readers:
        c = found.choices[arm]
        table = found.table[(found.table.arm == arm) & (found.table.lr == c.lr)]
        mean = table.groupby("exposures", sort=True).mean(numeric_only=True).reset_index()
        mean.insert(0, "arm", READER_ARMS[arm])
        rows.append(mean)
    measured = Measured()
    prefixes = tuple(f"{arm_name(a)} e" for a in readers) + (f"{READER} ", f"NLL: {READER}") + tuple(f"NLL: {arm_name(a)} e" for a in readers)
    for name, outcomes in found.measured.outcomes.items():
        if name.startswith(prefixes):
            measured.record(name, outcomes, tokens=found.measured.outcome_tokens.get(name))
    table = pd.concat(rows, ignore_index=True)[list(CURVE_COLUMNS) + list(PROBE_COLUMNS)]
    return Injection(table, {a: found.choices[a].checkpoint for a in readers}, found.reader, measured)


def study_table(found: "Study") -> pd.DataFrame:
    """The study's every run, one row per arm, rate, seed and checkpoint (STUDY_COLUMNS: the test
    columns only on the chosen rate's seeds, the others were never scored on a test fact), the arm
    by its name (the gold questions named an upper bound), each row marked where it is the arm's
    chosen rate and checkpoint."""
    table = found.table.copy()
    table["chosen"] = [r.lr == found.choices[r.arm].lr and r.exposures == found.choices[r.arm].checkpoint.exposures
                       for r in table.itertuples()]
    table["arm"] = [GOLD_ARM if a == GOLD else READER_ARMS[a] for a in table.arm]
    return table


def study_curve(ch: Chapter, found: Study) -> tuple[Curve, Checkpoint]:
    """The gold arm of the study as chapter 3's knowledge curve: its chosen rate's seed-mean row per
    checkpoint (CURVE_COLUMNS), each checkpoint by its first seed's unit reference, its first seed's
    training metrics, its outcomes; and its chosen checkpoint."""
    c = found.choices[GOLD]
    table = found.table[(found.table.arm == GOLD) & (found.table.lr == c.lr)]
    mean = table.groupby("exposures", sort=True).mean(numeric_only=True).reset_index()
    mean.insert(0, "arm", GOLD_ARM)
    names = tuple(dsf_name(ch.best_count, e) + " " for e in mean.exposures)
    measured = Measured()
    for name, outcomes in found.measured.outcomes.items():
        if name.startswith(names):
            measured.record(name, outcomes, tokens=found.measured.outcome_tokens.get(name))
    first = c.runs[0].result
    folders = {int(e): first.ref(int(e) // c.per) for e in mean.exposures}
    metrics_ = {k: v for k, v in first.metrics.items() if k != "snapshots"}
    return Curve(mean[list(CURVE_COLUMNS)], folders, c.lr, metrics_, measured), c.checkpoint


def study(ch: Chapter, rag_conversations: list) -> Study:
    """Every arm of the study (the gold questions and each injection arm): at each rate of study_lrs at
    the first training seed, scored on the development facts; the rate rule picks its rate; its other
    seeds train at that rate; the checkpoint rule on the seed mean of the development outcomes picks
    one checkpoint for its seeds; the chosen rate's seeds are scored on the test facts at every
    checkpoint (score_test), each seed's outcomes and their mean recorded. The reader's arm: the
    injection arm whose chosen checkpoint answers the most held-out development questions at the seed
    mean (ties: fewer training tokens, then the order of injection_arms)."""
    p, plan, measured = ch.params, the_plan(), Measured()
    seeds, n_dev, rows, choices = training_seeds(p), len(ch.dev_facts), [], {}
    for arm in study_arms(p):
        rule = plan.fitness["dsf" if arm == GOLD else "injection"]["checkpoint"]
        grid = [run_arm(ch, arm, lr, seeds[0]) for lr in p.study_lrs]
        lr = choose_rate(grid, rule, n_dev)
        runs = [next(r for r in grid if r.lr == lr)] + [run_arm(ch, arm, lr, s) for s in seeds[1:]]
        checkpoint = choose_checkpoint(seed_mean_curve(runs), rule, n_dev)
        per = per_epoch(ch, arm)
        choices[arm] = ArmChoice(arm, lr, checkpoint, runs, grid, per)
        with ch.clock.stage(f"study_{arm}_test"):
            for exposures in arm_exposures(p, arm):
                name = checkpoint_name(arm, exposures, ch.best_count)
                outs = []
                for k, arm_run in enumerate(runs, 1):
                    model_lm = arm_run.result.at(exposures // per)
                    row, out = score_test(ch, arm, model_lm, name + seed_tag(k), rag_conversations)
                    outs.append(out)
                    next(r for r in arm_run.rows if r["exposures"] == exposures).update(row)
                    del model_lm
                    release_memory()
                measured.update(merge_seeds(outs))
        rows += [r for arm_run in grid if arm_run.lr != lr for r in arm_run.rows] + [r for arm_run in runs for r in arm_run.rows]
    table = pd.DataFrame([{k: r.get(k, float("nan")) for k in STUDY_COLUMNS} for r in rows], columns=list(STUDY_COLUMNS))
    readers = [a for a in p.injection_arms if a in choices]
    reader = None
    if readers:
        def dev_at_choice(arm):
            c = choices[arm]
            row = seed_mean_curve(c.runs).set_index("exposures").loc[c.checkpoint.exposures]
            return (-row.dev_heldout_acc, row.train_tokens, readers.index(arm))
        reader = min(readers, key=dev_at_choice)
        source = checkpoint_name(reader, choices[reader].checkpoint.exposures, ch.best_count)
        for name in [n for n in measured.outcomes if n.startswith(source + " ")]:
            measured.record(READER + name[len(source):], measured.outcomes[name])
        nll = f"NLL: {source}"
        for name in [n for n in measured.outcomes if n == nll or n.startswith(nll + " (")]:
            measured.record(f"NLL: {READER}" + name[len(nll):], measured.outcomes[name])
    return Study(table, choices, reader, measured)


@dataclass
class FormatView:
    """The generated answers: the format subset's table, and every test fact's outcomes."""

    table: pd.DataFrame
    measured: Measured


def format_view(ch: Chapter, found: Knowledge, study_: "Study | None" = None) -> FormatView:
    """Generated answers to every test fact's held-out question: the base model and the chosen
    fine-tune, closed book and with RAG (their outcomes "<name> generated"); the table shows the
    format subset's (the first n_format_facts). On a seeded draw (`study_`) the fine-tune's closed-book
    answers are the study's (its first seed's shown), and it answers with RAG once per seed."""
    name, measured = dsf_name(ch.best_count), Measured()
    if study_ is not None:
        return seeded_format_view(ch, found, study_)
    with ch.clock.stage("format_view"):
        closed = [tasks.dsf_messages(q.test_text) for q in ch.facts]
        k = len(ch.format_facts)
        table = pd.DataFrame({
            "question": [q.test_text for q in ch.facts], "gold": [q.answer for q in ch.facts],
            "base, closed book": generated(ch, measured, ch.lm, BASE, closed),
            "DSF (chosen), closed book": generated(ch, measured, found.dsf_lm, name, closed),
            "base + RAG": generated(ch, measured, ch.lm, "base + RAG", found.rag_conversations),
            "DSF + RAG": generated(ch, measured, found.dsf_lm, f"{name} + RAG", found.rag_conversations)}).head(k)
    return FormatView(table, measured)


def seeded_format_view(ch: Chapter, found: Knowledge, study_: "Study") -> FormatView:
    """format_view() on a seeded draw: the base model closed book and with RAG; the chosen fine-tune's
    closed-book answers as the study generated them (its first seed's shown: read back from its unit),
    and with RAG once per seed ("DSF p<n> + RAG generated (seed k)", and their mean)."""
    p, name, measured = ch.params, dsf_name(ch.best_count), Measured()
    models = [units.model(ref) for ref in study_.refs(GOLD)]
    with ch.clock.stage("format_view"):
        closed = [tasks.dsf_messages(q.test_text) for q in ch.facts]
        first = generate(models[0], closed, p.max_new_tokens, p.batch_size, desc=f"{name} (generated)")
        outs, texts = [Measured() for _ in models], []
        for k, (model_lm, out) in enumerate(zip(models, outs), 1):
            texts.append(generated(ch, out, model_lm, f"{name} + RAG{seed_tag(k)}", found.rag_conversations))
        measured.update(merge_seeds(outs))
        table = pd.DataFrame({
            "question": [q.test_text for q in ch.facts], "gold": [q.answer for q in ch.facts],
            "base, closed book": generated(ch, measured, ch.lm, BASE, closed),
            "DSF (chosen), closed book": [rag.strip_citations(t) for t in first.texts],
            "base + RAG": generated(ch, measured, ch.lm, "base + RAG", found.rag_conversations),
            "DSF + RAG": texts[0]}).head(len(ch.format_facts))
    return FormatView(table, measured)


@dataclass
class Variety:
    """K5 at equal exposures: one row per paraphrase count, and the fewer-paraphrase run's outcomes."""

    table: pd.DataFrame
    measured: Measured


def paraphrase_variety(ch: Chapter, curve: Curve) -> Variety:
    """K5 at equal exposures: one paraphrase per test fact trained for k5_exposures exposures
    (k5_exposures epochs; the development facts are left out, for time: nothing is chosen on this
    run), asked the held-out phrasings; beside it the curve's checkpoint at the same exposures (the
    most paraphrases). One row per paraphrase count."""
    p, low, top = ch.params, min(ch.params.paraphrase_counts), ch.best_count
    rows, measured = [], Measured()
    if seeded(p):
        return seeded_variety(ch, curve)
    with ch.clock.stage("paraphrases"):
        if low < top:
            fit = answering(tasks.train_dsf(p, ch.facts, low, p.k5_exposures, lr=curve.lr))
            held, seen = closed_book(ch, measured, fit.lm, dsf_name(low, p.k5_exposures))
            rows.append({"paraphrases": low, "exposures": p.k5_exposures, "held_out": share(held),
                         "trained_paraphrase": share(seen), "train_s": fit.metrics["train_s"]})
            del fit
            release_memory()
        row = curve.table.set_index("exposures").loc[p.k5_exposures]
        rows.append({"paraphrases": top, "exposures": p.k5_exposures, "held_out": row.heldout_acc,
                     "trained_paraphrase": row.trained_acc, "train_s": row.seconds})
    return Variety(pd.DataFrame(rows).set_index("paraphrases"), measured)


def seeded_variety(ch: Chapter, curve: Curve) -> Variety:
    """paraphrase_variety() with every training seed (the plan's `seeds`): the fewer-paraphrase run at
    the curve's rate once per seed, its outcomes per seed and at the mean; the curve's row at the same
    exposures is the seed mean the study recorded."""
    p, low, top = ch.params, min(ch.params.paraphrase_counts), ch.best_count
    rows, measured = [], Measured()
    with ch.clock.stage("paraphrases"):
        if low < top:
            outs, seconds = [], []
            for k, seed in enumerate(training_seeds(p), 1):
                fit = answering(tasks.train_dsf(p, ch.facts, low, p.k5_exposures, lr=curve.lr, seed=seed))
                out = Measured()
                closed_book(ch, out, fit.lm, dsf_name(low, p.k5_exposures) + seed_tag(k))
                outs.append(out)
                seconds.append(fit.metrics["train_s"])
                del fit
                release_memory()
            measured.update(merge_seeds(outs))
            means = {part: measured.outcomes[f"{dsf_name(low, p.k5_exposures)} {part}"]
                     for part in ("held-out", "trained paraphrase")}
            rows.append({"paraphrases": low, "exposures": p.k5_exposures, "held_out": share(means["held-out"]),
                         "trained_paraphrase": share(means["trained paraphrase"]), "train_s": sum(seconds) / len(seconds)})
        row = curve.table.set_index("exposures").loc[p.k5_exposures]
        rows.append({"paraphrases": top, "exposures": p.k5_exposures, "held_out": row.heldout_acc,
                     "trained_paraphrase": row.trained_acc, "train_s": row.seconds})
    return Variety(pd.DataFrame(rows).set_index("paraphrases"), measured)


def knowledge_style(table: pd.DataFrame):
    return table.style.format({"n": "{:.0f}", "held_out": "{:.0%}", "trained_paraphrase": "{:.0%}",
                               "exposures": "{:.0f}", "train_s": "{:.0f} s"}, na_rep="-")


def structured_outcomes(gen: Generation, questions: list) -> dict[str, dict]:
    """Per-question JSON validity, exact-schema adherence (1 or 0) and share of fields right."""
    if len(questions) != len(gen.texts):
        raise ValueError(f"{len(questions)} products but {len(gen.texts)} answers: they must pair up in order")
    return {"json_valid": {q.qid: metrics.json_valid(t) for t, q in zip(gen.texts, questions)},
            "schema": {q.qid: metrics.schema_adherence(t, STRUCTURED_FIELDS) for t, q in zip(gen.texts, questions)},
            "fields": {q.qid: metrics.fields_correct(t, q.fields) for t, q in zip(gen.texts, questions)}}


# The JSON conditions on the base model. The long instruction is zero-shot: it names the keys and
# their types but holds no example values (an example name in it was copied into the answers).
SHORT, ZERO_SHOT, FEW_SHOT = "base, short instruction", "base, long instruction", "base, long instruction + 2 examples"
CONSTRAINED = "base, short instruction + JSON grammar"
JSON_COLUMNS = {"json_valid": "json_valid", "schema_adherence": "schema", "fields_correct": "fields"}


@dataclass
class Behaviour:
    """The structured-output section: its table (one row per condition, on the test products), the
    answers of each condition, the fine-tune K4 tests (chosen on the development products), the
    development table it was chosen from, and the forgetting probe of the largest JSON fine-tune."""

    table: pd.DataFrame
    outputs: dict
    best: str
    best_size: int
    best_epochs: int
    dev: pd.DataFrame  # one row per (size, epochs) on the development products, the choice marked
    probe: tuple  # (label, ForgettingProbe)
    measured: Measured = field(default_factory=Measured)  # every test condition's per-product outcomes, the probe's


def json_config(params):
    """A JSON fine-tune's training: where one epoch count is tried, one run of that many epochs with
    the rate decayed to 0 (the published runs'); where several are, one run to the most at a constant
    rate after warm-up, so that the model after e epochs (a snapshot) is what an e-epoch run gives."""
    most = max(params.structured_epochs)
    if len(params.structured_epochs) == 1:
        return tasks.lora_config(params, most)
    return tasks.lora_config(params, most, schedule="constant", warmup=params.warmup_steps)


def model_after(result, epochs: int):
    """A JSON fine-tune after `epochs` epochs (its unit's checkpoint), merged to answer."""
    return result.at(epochs)


def choose_json(dev: pd.DataFrame) -> tuple[int, int]:
    """The plan's rule for the JSON fine-tune: the most fields right on the development products,
    ties to the fewer training examples times epochs (the cheaper fine-tune). Returns (size, epochs)."""
    best = min(dev.itertuples(), key=lambda r: (-r.fields_correct, r.size * r.epochs, r.size))
    return int(best.size), int(best.epochs)


def structured(ch: Chapter) -> Behaviour:
    """The base model with a short, a long (zero-shot) and a long + two-example instruction, the base
    model under the record's JSON-schema grammar with the short instruction, then a LoRA fine-tune
    per training size with the short one, each scored on the development products after every epoch
    count of structured_epochs and on the test products at the count its development products chose;
    the fine-tune K4 tests is the development products' choice among the sizes (choose_json). Each
    test condition's row (rates with 95 % intervals) and per-product outcomes."""
    p, clock, kb = ch.params, ch.clock, ch.kb
    test = [(kb, q) for q in kb.sample("structured", p.n_structured_test, p.seed)]
    dev = tasks.structured_dev_products(p.n_structured_dev, p.kb_seed, p.kb, max(p.structured_sizes))
    shots = [(m.messages[-1]["content"], m.answer) for m in
             tasks.structured_examples(2, p.kb_seed, p.kb, prompts.STRUCTURED_SYSTEM_LONG, first_seed=p.kb_seed + 1000)]
    conditions = {SHORT: (prompts.STRUCTURED_SYSTEM_SHORT, None), ZERO_SHOT: (prompts.STRUCTURED_SYSTEM_LONG, None),
                  FEW_SHOT: (prompts.STRUCTURED_SYSTEM_LONG, shots)}
    schema = json_schema(STRUCTURED_FIELDS)
    outputs, measured = {}, Measured()

    def replies(model_lm, products, system, examples, name, constrained=False) -> Generation:
        convs = [tasks.structured_messages(world, q, q.test_text, system, examples) for world, q in products]
        if constrained:  # enough new tokens for the longest record the grammar allows: it always closes
            return generate_json(model_lm, convs, schema, max_record_tokens(schema), p.batch_size, desc=name)
        return generate(model_lm, convs, p.structured_max_new_tokens, p.batch_size, desc=name)

    def answer(model_lm, system, examples, name, constrained=False, **extra):
        gen, questions = replies(model_lm, test, system, examples, name, constrained), [q for _, q in test]
        row, scored = tasks.structured_row(name, gen, questions, p.price_per_mtok, **extra), structured_outcomes(gen, questions)
        for column, score in JSON_COLUMNS.items():
            outcomes = scored[score]
            measured.record(f"{name}: {score}", outcomes,
                       tokens={q.qid: (gen.prompt_tokens[i], gen.completion_tokens[i]) for i, q in enumerate(questions)})
            values = list(outcomes.values())
            low, high = wilson_interval(sum(values), len(values)) if score != "fields" else mean_interval(values)
            row.update({f"{column}_low": low, f"{column}_high": high})
        outputs[name] = gen.texts
        return row

    def answer_seeds(models: list, name: str, **extra) -> dict:
        """Each seed's fine-tune on the test products ("<name>: <score> (seed k)"), and the seed mean
        ("<name>: <score>"): the table's row holds the mean's rates and the first seed's tokens."""
        gens, questions = [replies(m, test, prompts.STRUCTURED_SYSTEM_SHORT, None, f"{name}{seed_tag(k)}")
                           for k, m in enumerate(models, 1)], [q for _, q in test]
        row = tasks.structured_row(name, gens[0], questions, p.price_per_mtok, **extra)
        scored = [structured_outcomes(g, questions) for g in gens]
        for column, score in JSON_COLUMNS.items():
            tokens = [{q.qid: (g.prompt_tokens[i], g.completion_tokens[i]) for i, q in enumerate(questions)} for g in gens]
            mean = record_seeds(measured, f"{name}: {score}", [sc[score] for sc in scored], tokens)
            values = list(mean.values())
            row[column] = sum(values) / len(values)
            row.update(dict(zip((f"{column}_low", f"{column}_high"), mean_interval(values))))
        outputs[name] = gens[0].texts
        return row

    rows, dev_rows, json_probe, cfg = [], [], None, json_config(p)
    with clock.stage("structured"):
        for name, (system, examples) in conditions.items():
            rows.append(answer(ch.lm, system, examples, name))
        rows.append(answer(ch.lm, prompts.STRUCTURED_SYSTEM_SHORT, None, CONSTRAINED, constrained=True))
        seeds = training_seeds(p) if seeded(p) else [None]  # a draw with the study seeds every fine-tune
        for size in p.structured_sizes:
            results = [units.train(p.model, tasks.structured_examples(size, p.kb_seed, p.kb),
                                   cfg if seed is None else replace(cfg, seed=seed), label=f"json-{size}",
                                   snapshots=tuple(p.structured_epochs[:-1])) for seed in seeds]
            for epochs in p.structured_epochs:
                per_seed = []
                for k, result in enumerate(results, 1):
                    model_lm = model_after(result, epochs)
                    name = f"{tasks.lora_structured_name(size)}, {epochs} epoch{'s' if epochs > 1 else ''} (development)"
                    gen = replies(model_lm, dev, prompts.STRUCTURED_SYSTEM_SHORT, None, name + (seed_tag(k) if seeds != [None] else ""))
                    scores = tasks.structured_row(name, gen, [q for _, q in dev], p.price_per_mtok)
                    per_seed.append({k_: scores[k_] for k_ in JSON_COLUMNS})
                    del model_lm  # a snapshot is loaded again if its development products choose it
                dev_rows.append({"size": size, "epochs": epochs, "n": len(dev),  # the seed mean of each rate
                                 **{k_: sum(r[k_] for r in per_seed) / len(per_seed) for k_ in JSON_COLUMNS}})
            # each size answers the test products at the epochs its development products chose
            _, epochs = choose_json(pd.DataFrame([r for r in dev_rows if r["size"] == size]))
            result = results[0]
            model_lm = model_after(result, epochs)
            seconds = result.metrics["snapshots"][str(epochs)]["train_s"] if epochs != cfg.epochs else result.metrics["train_s"]
            if seeds == [None]:
                rows.append(answer(model_lm, prompts.STRUCTURED_SYSTEM_SHORT, None, tasks.lora_structured_name(size),
                                   epochs=epochs, train_s=seconds))
            else:
                rows.append(answer_seeds([model_lm] + [model_after(r, epochs) for r in results[1:]],
                                         tasks.lora_structured_name(size), epochs=epochs, train_s=seconds))
            if size == max(p.structured_sizes):
                label = f"JSON, LoRA ({size} examples)"
                json_probe = (label, probe(label, model_lm, ch.general))
                measured.update(json_probe[1].measured)
            del results, result, model_lm
            release_memory()
    dev_table = pd.DataFrame(dev_rows)
    best_size, best_epochs = choose_json(dev_table)
    dev_table["chosen"] = (dev_table["size"] == best_size) & (dev_table["epochs"] == best_epochs)
    return Behaviour(pd.DataFrame(rows).set_index("condition"), outputs, tasks.lora_structured_name(best_size), best_size,
                     best_epochs, dev_table, json_probe, measured)


def json_dev_style(table: pd.DataFrame):
    return table.style.format({"json_valid": "{:.0%}", "schema_adherence": "{:.0%}", "fields_correct": "{:.0%}"})


def behaviour_style(table: pd.DataFrame):
    """Each rate with its 95 % interval (Wilson; a bootstrap for the mean share of fields right)."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_low", "_high"))])
    for column in JSON_COLUMNS:
        if f"{column}_low" in table:
            shown[column] = [f"{v:.0%} [{lo:.0%}, {hi:.0%}]" for v, lo, hi in
                             zip(table[column], table[f"{column}_low"], table[f"{column}_high"])]
    return shown.style.format({"prompt_tokens": "{:.0f}", "completion_tokens": "{:.1f}", "epochs": "{:.0f}",
                               "cost_per_1k_usd": "${:.3f}", "train_s": "{:.0f} s"}, na_rep="-")


def output_examples(behaviour: Behaviour, n: int = 3) -> pd.DataFrame:
    """The first n products' answers under every JSON condition."""
    return pd.DataFrame({c: o[:n] for c, o in behaviour.outputs.items()}).T.rename(columns=lambda i: f"product {i + 1}")


# ---------------------------------------------------------------------------------------------
# LoRA, QLoRA and full fine-tuning


COST_COLUMNS = ("trainable_share", "step_s", "tokens_per_s", "mfu", "peak_mb", "base_weight_mb", "artifact_mb")


@dataclass
class Methods:
    """The methods section: one row per method (quality on the method facts, training costs), the
    LoRA seeds' rows, each method's forgetting probe by label, and each run's training metrics."""

    table: pd.DataFrame
    seeds: pd.DataFrame
    probes: dict
    runs: dict
    measured: Measured = field(default_factory=Measured)  # every run's outcomes and probe

def methods(ch: Chapter, lrs: dict) -> Methods:
    """The first n_method_facts test facts (most paraphrases, method_exposures per fact, constant
    rate) trained with every method of `methods` at its own chosen rate, LoRA once per seed of
    n_training_seeds: each run's closed-book quality ("methods <method> quality"), training costs and
    forgetting probe ("NLL: methods, <method>")."""
    p, facts, count = ch.params, ch.method_facts, ch.best_count
    rows, seed_rows, probes, runs, measured = [], [], {}, {}, Measured()
    if seeded(p):
        return seeded_methods(ch, lrs)
    with ch.clock.stage("methods"):
        for name in [m for m in p.methods if m not in ch.skipped]:
            for seed in (range(p.n_training_seeds) if name == "lora" else [0]):
                fit = answering(tasks.train_dsf(p, facts, count, p.method_exposures, lr=lrs[name], method=name,
                                                seed=p.seed + seed, label=f"dsf-p{count}-{name}"))
                held, seen = closed_book(ch, measured, fit.lm, method_name(name, seed), facts)
                if name == "lora":
                    seed_rows.append({"seed": p.seed + seed, "held_out": share(held), "trained_paraphrase": share(seen)})
                if seed == 0:
                    probes[method_label(name)] = probe(method_label(name), fit.lm, ch.general)
                    measured.update(probes[method_label(name)].measured)
                    runs[name] = fit.metrics
                    rows.append({"method": name, "lr": lrs[name], "held_out": share(held), "trained_paraphrase": share(seen),
                                 "quality": (share(held) + share(seen)) / 2, **{k: fit.metrics[k] for k in COST_COLUMNS}})
                del fit
                release_memory()
    return Methods(pd.DataFrame(rows).set_index("method"), pd.DataFrame(seed_rows).set_index("seed"), probes, runs,
                   measured)


def seeded_methods(ch: Chapter, lrs: dict) -> Methods:
    """methods() where every method trains with every training seed (the plan's `seeds`): each seed's
    outcomes "methods <method> ... (seed k)" and their mean "methods <method> ..."; each seed's
    forgetting probe ("NLL: methods, <method> (seed k)") and the mean per segment; the table's row
    holds the mean's accuracies and the first seed's costs, the seeds table one row per method and seed."""
    p, facts, count = ch.params, ch.method_facts, ch.best_count
    rows, seed_rows, probes, runs, measured = [], [], {}, {}, Measured()
    with ch.clock.stage("methods"):
        for name in [m for m in p.methods if m not in ch.skipped]:
            outs, nll, first = [], [], None
            for k, seed in enumerate(training_seeds(p), 1):
                fit = answering(tasks.train_dsf(p, facts, count, p.method_exposures, lr=lrs[name], method=name,
                                                seed=seed, label=f"dsf-p{count}-{name}"))
                out = Measured()
                held, seen = closed_book(ch, out, fit.lm, method_name(name) + seed_tag(k), facts)
                outs.append(out)
                seed_rows.append({"method": name, "seed": seed, "held_out": share(held), "trained_paraphrase": share(seen)})
                found = probe(method_label(name) + seed_tag(k), fit.lm, ch.general)
                nll.append(found)
                first = first or (fit.metrics, found)
                del fit
                release_memory()
            merged = merge_seeds(outs)
            measured.update(merged)
            parts = {part: merged.outcomes[f"{method_name(name)} {part}"] for part in ("held-out", "trained paraphrase", "quality")}
            runs[name] = first[0]
            probes[method_label(name)] = seed_mean_probe(method_label(name), nll)
            measured.update(probes[method_label(name)].measured)
            rows.append({"method": name, "lr": lrs[name], "held_out": share(parts["held-out"]),
                         "trained_paraphrase": share(parts["trained paraphrase"]), "quality": share(parts["quality"]),
                         **{k: first[0][k] for k in COST_COLUMNS}})
    return Methods(pd.DataFrame(rows).set_index("method"), pd.DataFrame(seed_rows).set_index(["method", "seed"]), probes,
                   runs, measured)


def seed_spread(seeds: pd.DataFrame) -> float:
    """The largest difference in held-out accuracy between two seeds (0 with one seed)."""
    return float(seeds.held_out.max() - seeds.held_out.min()) if len(seeds) else 0.0


def cost_style(table: pd.DataFrame):
    return table.style.format({"lr": "{:.1e}", "held_out": "{:.0%}", "trained_paraphrase": "{:.0%}", "quality": "{:.0%}",
                               "trainable_share": "{:.2%}", "step_s": "{:.2f} s", "tokens_per_s": "{:.0f}",
                               "mfu": "{:.0%}", "peak_mb": "{:,.0f} MB", "base_weight_mb": "{:,.0f} MB",
                               "artifact_mb": "{:,.1f} MB"})


# ---------------------------------------------------------------------------------------------
# Forgetting


def forgetting_table(probes: dict) -> pd.DataFrame:
    """Perplexity on the general texts (together and per text) per model (label -> ForgettingProbe,
    the base model's first), and the change of each against the base model."""
    base = probes["base model"]
    table = pd.DataFrame({"perplexity": {k: v.perplexity for k, v in probes.items()}}).rename_axis("model")
    table["change"] = table.perplexity / base.perplexity - 1
    for text_name in base.by_text:
        table[f"{text_name} change"] = [v.by_text.get(text_name, float("nan")) / base.by_text[text_name] - 1
                                        for v in probes.values()]
    return table


def forgetting_style(table: pd.DataFrame):
    return table.style.format({"perplexity": "{:.2f}", **{c: "{:+.1%}" for c in table.columns if c.endswith("change")}})


# ---------------------------------------------------------------------------------------------
# Headline metrics


def ratio_tol(a: float, b: float, tol_a: float, tol_b: float) -> float:
    """Tolerance of a / b from the parts' tolerances (first order), finite when b is 0 or near it."""
    floor = max(abs(b), tol_b, 1e-9)
    return (tol_a + abs(a / floor) * tol_b) / floor


def cost_saving_rule(params, n: int, tuned_cost: float, prompt_cost: float) -> dict:
    """How `1 - tuned_cost / prompt_cost` (dollars per 1,000 queries) may move: exact when only
    prompt tokens are priced (they are deterministic); otherwise each answer that may flip can move
    its completion by up to structured_max_new_tokens, which moves both costs (first order)."""
    price = load_prices()[params.price_per_mtok]
    if price.get("output_per_mtok") is None:
        return {"kind": "exact"}
    cost_shift = rate_tolerance(n) * params.structured_max_new_tokens * price["output_per_mtok"] / 1000
    return {"kind": "derived", "tol": ratio_tol(tuned_cost, prompt_cost, cost_shift, cost_shift)}


@dataclass
class Findings:
    """What the chapter's steps returned, handed together to the metrics, comparisons and glue."""

    sweep: pd.DataFrame  # with its `chosen` column
    lrs: dict
    curve: Curve
    chosen: Checkpoint
    knowledge: Knowledge
    variety: Variety
    behaviour: Behaviour
    methods: Methods
    answers: FormatView | None = None  # format_view's generated answers
    dsf_probe: ForgettingProbe | None = None  # the chosen fine-tune's (probe_chosen)
    injected: Injection | None = None  # the arms a reader could build (injection_curves, or study_injection)
    study: "Study | None" = None  # a seeded draw's knowledge study (every arm, rate and seed)

    @property
    def measured(self) -> Measured:
        """Every step's per-question outcomes (and chapter 3's hand-over), in run order."""
        return Measured.merged(self.curve.measured, self.knowledge.measured, self.variety.measured,
                               self.answers.measured if self.answers else None,
                               self.injected.measured if self.injected else None, self.behaviour.measured,
                               self.methods.measured, self.dsf_probe.measured if self.dsf_probe else None)

    def outcomes(self, ch: Chapter) -> dict:
        """Every condition's per-question outcomes, the set-up's with the steps'."""
        return Measured.merged(ch.measured, self.measured).outcomes

    def probes(self, ch: Chapter) -> dict:
        """Every forgetting probe by its label, the base model's first."""
        return {"base model": ch.base_probe, **({DSF_LABEL: self.dsf_probe} if self.dsf_probe else {}),
                self.behaviour.probe[0]: self.behaviour.probe[1], **self.methods.probes}


def probe_chosen(ch: Chapter, found: Knowledge, study_: "Study | None" = None) -> ForgettingProbe:
    """The chosen fine-tune's forgetting probe ("NLL: DSF, LoRA"): K7 at the checkpoint that stands
    for fine-tuning; on a seeded draw each seed's (read back from the study's units) and their mean."""
    if study_ is None:
        return probe(DSF_LABEL, found.dsf_lm, ch.general)
    return seed_mean_probe(DSF_LABEL, [probe(DSF_LABEL, units.model(ref), ch.general) for ref in study_.refs(GOLD)])


def headline_metrics(ch: Chapter, f: Findings) -> Measured:
    """The chapter's headline metrics, each declared with its kind on the results file."""
    p, n, outcomes = ch.params, ch.n_facts, f.outcomes(ch)
    b, cost = f.behaviour.table, f.methods.table
    m = Measured()
    put = m.metric

    count, curve = ch.best_count, f.curve.table.set_index("exposures")
    chosen = curve.loc[f.chosen.exposures]
    put("base_closed_ranked", f.knowledge.held_out(CLOSED_ROW), "rate", n=n)
    put("dsf_heldout_ranked", chosen.heldout_acc, "rate", n=n)
    put("dsf_train_ranked", chosen.trained_acc, "rate", n=n)
    put("rag_same_questions_ranked", f.knowledge.held_out(RAG_ROW.format(k=p.rag_top_k)), "rate", n=n)
    put("dsf_plus_rag_ranked", f.knowledge.held_out(DSF_RAG_ROW), "rate", n=n)
    put("rag_recall", f.knowledge.rag_recall, "rate", n=n)
    put("gold_document_ranked", f.knowledge.held_out(GOLD_ROW), "rate", n=n)
    put("n_facts", n, "exact")
    # the curve and the checkpoint that stands for the fine-tune (chosen on the development facts)
    put("dsf_chosen_exposures", f.chosen.exposures, "choice")
    put("dsf_converged_exposures", f.chosen.converged, "exact")
    put("dsf_fitness_trained", chosen.trained_acc, "rate", n=n)
    put("dsf_fitness_reached", int(f.chosen.reached), "choice")
    put("dsf_dev_trained", chosen.dev_trained_acc, "rate", n=len(ch.dev_facts))
    put("dsf_dev_heldout", chosen.dev_heldout_acc, "rate", n=len(ch.dev_facts))
    put("dsf_converged_heldout", curve.loc[f.chosen.converged].heldout_acc, "rate", n=n)
    put("dsf_chosen_train_s", chosen.seconds, "machine")
    if ch.known:
        put("known_n", len(ch.known), "exact")
        put("dsf_known_acc", chosen.known_acc, "rate", n=len(ch.known))
    for exposures, row in curve.iterrows():
        put(f"dsf_e{exposures}_heldout_ranked", row.heldout_acc, "rate", n=n)
        put(f"dsf_e{exposures}_train_ranked", row.trained_acc, "rate", n=n)
    for count_, row in f.variety.table.iterrows():
        put(f"dsf_p{count_}_heldout_ranked", row.held_out, "rate", n=n)
        put(f"dsf_p{count_}_train_ranked", row.trained_paraphrase, "rate", n=n)
    put("k5_exposures", p.k5_exposures, "exact")
    if f.study is None:
        put("n_training_seeds", len(f.methods.seeds), "exact")
        put("dsf_seed_spread", seed_spread(f.methods.seeds), "rate", n=len(ch.method_facts))
    else:  # a seeded draw: each arm's spread at its chosen rate and checkpoint, from its own seeds' runs
        put("n_training_seeds", len(training_seeds(p)), "exact")
        for arm, c in f.study.choices.items():
            key = "dsf" if arm == GOLD else f"inject_{arm}"
            at = [next(r for r in arm_run.rows if r["exposures"] == c.checkpoint.exposures) for arm_run in c.runs]
            put(f"{key}_seed_spread", max(r["heldout_acc"] for r in at) - min(r["heldout_acc"] for r in at), "rate", n=n)
            put(f"{key}_lr_study", c.lr, "choice")
            # each seed's own fitness at the arm's checkpoint (the plan's seeds.per_seed): the fitness
            # metric with "_seed<k>", which chapter 7 reads for that seed's verdict
            rule = the_plan().fitness["dsf" if arm == GOLD else "injection"]["checkpoint"]
            for k, arm_run in enumerate(c.runs, 1):
                fit = fit_at(pd.DataFrame(arm_run.rows), c.checkpoint.exposures, rule, len(ch.dev_facts))
                if arm == GOLD:
                    put(f"dsf_fitness_reached_seed{k}", int(fit), "choice")
                elif arm == f.study.reader:
                    put(f"injection_fitness_reached_seed{k}", int(fit), "choice")
        if f.study.reader:
            put("reader_seed_spread", m[f"inject_{f.study.reader}_seed_spread"], "rate", n=n)
    # The rates above rank the gold value against LOOKALIKES look-alikes: guessing scores this.
    put("knowledge_chance", 1 / (LOOKALIKES + 1), "exact")
    for key in ("base_closed", "dsf_heldout", "dsf_train", "rag", "dsf_plus_rag", "gold_document"):
        put(f"{key}_n", n, "exact")
    put("dev_facts_n", len(ch.dev_facts), "exact")
    put("methods_n", len(ch.method_facts), "exact")
    put("format_n", len(ch.format_facts), "exact")
    if f.answers is not None:
        generated_keys = {"base": BASE, "dsf": dsf_name(count), "rag": "base + RAG", "dsf_plus_rag": f"{dsf_name(count)} + RAG"}
        for key, name in generated_keys.items():
            put(f"{key}_generated_contains", share(outcomes[f"{name} generated"]), "rate", n=n)
    for method, lr in f.lrs.items():
        put(f"{method.replace('-', '_')}_lr_chosen", lr, "choice")
    if f.injected is not None and f.injected.reader:
        inj = f.injected
        for arm, checkpoint in inj.chosen.items():
            put(f"inject_{arm}_chosen_exposures", checkpoint.exposures, "choice")
            put(f"inject_{arm}_fitness_reached", int(checkpoint.reached), "choice")
        for row in inj.table.itertuples():
            key = f"inject_{next(k for k, v in READER_ARMS.items() if v == row.arm)}_e{row.exposures}"
            put(f"{key}_heldout_ranked", row.heldout_acc, "rate", n=n)
            put(f"{key}_stored", row.trained_acc, "rate", n=n)
            put(f"{key}_generated_contains", row.heldout_generated, "rate", n=n)
        put("injection_fitness_reached", int(inj.chosen[inj.reader].reached), "choice")
        put("reader_heldout_ranked", share(outcomes[f"{READER} held-out"]), "rate", n=n)

    n_json = shared_n(b)
    tuned = b[b.index.str.startswith("LoRA")]
    best, long_prompt, zero_shot = f.behaviour.best, b.loc[ZERO_SHOT], b.loc[SHORT]
    few_shot, grammar = b.loc[FEW_SHOT], b.loc[CONSTRAINED]
    put("json_valid_zero_shot", zero_shot.json_valid, "rate", n=n_json)
    put("json_valid_long_prompt", long_prompt.json_valid, "rate", n=n_json)
    put("json_valid_few_shot", few_shot.json_valid, "rate", n=n_json)
    put("json_valid_constrained", grammar.json_valid, "rate", n=n_json)
    put("json_valid_lora_best", tuned.loc[best, "json_valid"], "rate", n=n_json)
    put("schema_adherence_lora_best", tuned.loc[best, "schema_adherence"], "rate", n=n_json)
    put("schema_adherence_zero_shot", zero_shot.schema_adherence, "rate", n=n_json)
    put("schema_adherence_long_prompt", long_prompt.schema_adherence, "rate", n=n_json)
    put("schema_adherence_few_shot", few_shot.schema_adherence, "rate", n=n_json)
    put("schema_adherence_constrained", grammar.schema_adherence, "rate", n=n_json)
    put("fields_correct_lora_best", tuned.loc[best, "fields_correct"], "mean", n=n_json)
    put("fields_correct_long_prompt", long_prompt.fields_correct, "mean", n=n_json)
    put("fields_correct_few_shot", few_shot.fields_correct, "mean", n=n_json)
    put("fields_correct_constrained", grammar.fields_correct, "mean", n=n_json)
    put("prompt_tokens_long", long_prompt.prompt_tokens, "exact")
    put("prompt_tokens_lora", tuned.loc[best, "prompt_tokens"], "exact")
    put("s8_cost_saving", 1 - tuned.loc[best, "cost_per_1k_usd"] / long_prompt.cost_per_1k_usd,
        **cost_saving_rule(p, n_json, tuned.loc[best, "cost_per_1k_usd"], long_prompt.cost_per_1k_usd))
    for size in p.structured_sizes:
        put(f"schema_adherence_lora_{size}", tuned.loc[tasks.lora_structured_name(size), "schema_adherence"], "rate", n=n_json)
        put(f"fields_correct_lora_{size}", tuned.loc[tasks.lora_structured_name(size), "fields_correct"], "mean", n=n_json)
    for condition in ("zero_shot", "long_prompt", "few_shot", "constrained", "lora_best"):  # every JSON row: the same products
        put(f"json_{condition}_n", n_json, "exact")
    put("json_lora_best_size", f.behaviour.best_size, "choice")
    put("json_lora_best_epochs", f.behaviour.best_epochs, "choice")
    put("json_dev_n", shared_n(f.behaviour.dev), "exact")

    n_methods = len(ch.method_facts)
    for name, r in cost.iterrows():
        key = name.replace("-", "_")
        put(f"{key}_step_s", r.step_s, "machine")
        put(f"{key}_peak_mb", r.peak_mb, "machine")
        put(f"{key}_mfu", r.mfu, "machine")
        put(f"{key}_trainable_share", r.trainable_share, "exact")
        put(f"{key}_quality", r.quality, "mean", n=n_methods)
        put(f"{key}_artifact_mb", r.artifact_mb, "derived", tol=ARTIFACT_MB_TOL)
    bf16_mb = ch.lm.n_params() * 2 / 2**20
    put("peak_gflops", f.methods.runs["lora"]["peak_gflops"], "machine")
    put("bf16_weight_mb", bf16_mb, "exact")
    if "full" in cost.index:
        full, lora = cost.loc["full"], cost.loc["lora"]
        put("lora_step_ratio_vs_full", lora.step_s / full.step_s, "machine")
        put("lora_peak_ratio_vs_full", lora.peak_mb / full.peak_mb, "machine")
        quality_ratio = lora.quality / full.quality if full.quality > 0 else 0.0
        put("lora_quality_ratio_vs_full", quality_ratio, "derived",
            tol=ratio_tol(lora.quality, full.quality, rate_tolerance(n_methods), rate_tolerance(n_methods)))
    if "qlora" in cost.index:
        put("qlora_base_weight_ratio_vs_bf16", cost.loc["qlora"].base_weight_mb / bf16_mb, "exact")
    put("embedding_share", ch.lm.model.get_input_embeddings().weight.numel() / ch.lm.n_params(), "exact")

    ppl = forgetting_table(f.probes(ch))
    put("perplexity_base", ch.base_probe.perplexity, "derived", tol=PERPLEXITY_TOL)
    if DSF_LABEL in ppl.index:
        put("forgetting_delta_dsf", ppl.loc[DSF_LABEL, "change"], "derived", tol=FORGETTING_DELTA_TOL)
    for method in cost.index:
        key = "forgetting_delta_" + method.replace("-", "_")
        put(key, ppl.loc[method_label(method), "change"], "derived", tol=FORGETTING_DELTA_TOL)
    put("model_params_m", ch.lm.n_params() / 1e6, "exact")
    # The questions behind each headline figure: a change of n is a change of design, never drift.
    put("knowledge_n", n, "exact")
    put("structured_n", n_json, "exact")
    put("forgetting_segments_n", len(ch.base_probe.segment_nll), "exact")
    return m


# ---------------------------------------------------------------------------------------------
# Comparisons and sentences


TRAINED_COMPARISONS = ("K1-rag-vs-dsf", "K1-memorisation", "K5-paraphrases", "K6-dsf-plus-rag", "K5-rag-vs-dsf-rag",
                       "T1-lora-vs-full", "T3-qlora-vs-lora", "T3-attention-only")


def equal_exposures(params) -> int:
    """The exposures at which the injection arms are compared with one another (K5-rewritten-documents,
    K1-generated-documents): the last checkpoint every arm of injection_arms is scored at."""
    shared = set.intersection(*(set(arm_exposures(params, a)) for a in params.injection_arms)) if params.injection_arms else set()
    return max(shared) if shared else max(params.injection_exposures)


def comparisons(ch: Chapter, f: Findings) -> dict[str, StatedComparison]:
    """Every comparison the analysis plan declares for this chapter (ragft.results.state_comparisons),
    with the run's choices for its placeholders and its arms' labels, keyed by comparison id; `save`
    keeps them on the results file. Directions are the claims' own, whatever this run measured."""
    p, top = ch.params, ch.best_count
    low, e5, sizes, ran = min(p.paraphrase_counts), p.k5_exposures, p.structured_sizes, f.methods.table.index
    inj, last = f.injected, equal_exposures(p)
    dsf_label = f"the chosen DSF ({f.chosen.exposures} exposures)"
    reader = f"the reader's fine-tune ({READER_ARMS[inj.reader]})" if inj is not None and inj.reader else ""
    choices = {"count": top, "examples": f.behaviour.best_size,
               "K5-paraphrases": {"fewer": low, "exposures": e5},
               "K5-rewritten-documents": {"exposures": last}, "K1-generated-documents": {"exposures": last},
               "T4-sizes": {"more": max(sizes), "fewer": min(sizes)}}
    unmeasured = {cid: why for cid, why in {
        "K5-paraphrases": "paraphrase_counts has one count" if low >= top else "",
        "K7-known-facts": "n_known is 0" if not ch.known else "",
        "T4-sizes": "structured_sizes has one size" if len(sizes) < 2 else "",
        "T1-lora-vs-full": "full fine-tuning is not in methods" if "full" not in ran else "",
        "K7-full-vs-lora": "full fine-tuning is not in methods" if "full" not in ran else "",
        "K7-forgetting-full": "full fine-tuning is not in methods" if "full" not in ran else "",
        "T3-qlora-vs-lora": "QLoRA is not in methods" if "qlora" not in ran else "",
        "K7-forgetting-qlora": "QLoRA is not in methods" if "qlora" not in ran else "",
        "T3-attention-only": "attention-only LoRA is not in methods" if "lora-attention" not in ran else "",
        **{cid: "injection_arms does not name both of its arms in this run" if not reader or not arms <= set(p.injection_arms) else ""
           for cid, arms in (("K1-rag-vs-reader", set()), ("K5-rewritten-documents", {"rewritten", "documents"}),
                             ("K1-generated-documents", {"generated", "documents"}), ("K1-reader-equivalent", set()),
                             ("K5-rag-vs-reader-rag", set()), ("K6-reader-plus-rag", set()), ("K7-forgetting-reader", set()))},
    }.items() if why}
    labels = {
        "K1-rag-vs-dsf": ("RAG", f"closed-book {dsf_label}"),
        # K1's other face: a fine-tune that learnt the facts would answer new phrasings as well as trained ones
        "K1-memorisation": ("trained phrasings", "held-out phrasings"),
        "K5-paraphrases": (f"{top} paraphrases per fact", f"{low} paraphrase{'s' if low > 1 else ''} per fact (both {e5} exposures)"),
        "K6-dsf-plus-rag": (f"{dsf_label} + RAG", f"{dsf_label} alone"),
        "K5-rag-vs-dsf-rag": ("RAG alone", f"{dsf_label} + RAG"),
        "K7-known-facts": (dsf_label, "the base model"),
        # knowledge injection as a reader would do it: the arms that train on the documents alone
        "K1-rag-vs-reader": ("RAG", reader),
        "K1-reader-equivalent": ("RAG", reader),
        "K5-rag-vs-reader-rag": ("RAG alone", f"{reader} + RAG"),
        "K6-reader-plus-rag": (f"{reader} + RAG", f"{reader} alone"),
        "K7-forgetting-reader": (reader, "the base model"),
        "K5-rewritten-documents": (READER_ARMS["rewritten"], READER_ARMS["documents"]),
        "K1-generated-documents": (READER_ARMS["generated"], READER_ARMS["documents"]),
        # K4: the fine-tune against zero-shot prompting at its strongest (the long instruction, no example values)
        "K4-json": (f"the best fine-tune ({f.behaviour.best})", "the zero-shot long instruction"),
        # K4 says the fine-tune wins "even with examples in context": the exact schema against the few-shot prompt
        "K4-few-shot": ("the best fine-tune", "two worked examples in the prompt"),
        # K4's limit: constrained decoding forces the schema on the base model, so what is left to win is the
        # values (a share of each product's fields: points)
        "K4-constrained": ("the best fine-tune", "the base model under a JSON-schema grammar", True),
        "T4-sizes": (f"{max(sizes)} training examples", f"{min(sizes)} training examples"),
        # the methods' quality is a share of their facts' candidates ranked first: points
        "T1-lora-vs-full": ("LoRA", "full fine-tuning", True),
        "T3-qlora-vs-lora": ("QLoRA", "LoRA", True),
        "T3-attention-only": ("adapters on every linear layer", "attention projections only", True),
        # K7: fine-tuning forgets: the chosen fine-tune's loss on general text against the base model's (per
        # segment, lower is better), and each method's run; full fine-tuning against LoRA on the same facts
        "K7-forgetting-lora": ("the chosen LoRA fine-tune", "the base model"),
        "K7-forgetting-qlora": (METHOD_LABELS["qlora"], "the base model"),
        "K7-forgetting-full": (METHOD_LABELS["full"], "the base model"),
        "K7-full-vs-lora": ("full fine-tuning", "LoRA"),
    }
    # the reader arms' K1, K5, K6 and K7 comparisons are a draw's own (the plan declares them from draw d2 on)
    declared = {cid for cid, spec in the_plan().comparisons.items() if spec.chapter == CHAPTER}
    labels = {cid: v for cid, v in labels.items() if cid in declared}
    unmeasured = {cid: why for cid, why in unmeasured.items() if cid in declared}
    return state_comparisons(CHAPTER, f.outcomes(ch), labels, choices, unmeasured, profile=p.profile)


def seed_sensitivity(comparisons: dict[str, StatedComparison], spread: float) -> pd.DataFrame:
    """For each comparison of a trained arm on accuracies: its measured difference, and whether a
    seed spread as large as the one measured could flip its sign (|difference| <= spread)."""
    rows = []
    for claim in TRAINED_COMPARISONS:
        stated = comparisons.get(claim)
        c = getattr(stated, "comparison", None)
        if c is None:
            continue
        rows.append({"comparison": claim, "difference": c.diff, "seed_spread": spread,
                     "a_seed_could_flip_it": abs(c.diff) <= spread})
    return pd.DataFrame(rows, columns=["comparison", "difference", "seed_spread", "a_seed_could_flip_it"]).set_index("comparison")


def seed_verdict_table(comparisons: dict[str, StatedComparison]) -> pd.DataFrame:
    """On a seeded draw, each comparison of an arm trained with several seeds: its difference at the
    seed mean with its interval, its verdict on each training seed alone (raw, without the fitness
    rules: chapter 7 judges each seed at the family's adjusted p and its own fitness), and whether the
    seeds' verdicts disagree. Empty without seeded arms."""
    rows = []
    for claim, stated in comparisons.items():
        c = getattr(stated, "comparison", None)
        if c is None or not c.seeds:
            continue
        said = c.as_dict()
        rows.append({"comparison": claim, "difference (seed mean)": difference_text(c.diff, c.ci_low, c.ci_high, score_kind(said)),
                     "each training seed (raw)": seed_verdicts_text(said),
                     "seeds_disagree": seeds_disagree(c.seeds)})
    columns = ["comparison", "difference (seed mean)", "each training seed (raw)", "seeds_disagree"]
    return pd.DataFrame(rows, columns=columns).set_index("comparison")


def seeds_view(comparisons: dict[str, StatedComparison], spread: float):
    """What another training seed could do to the chapter's comparisons, styled: each seeded
    comparison's verdict on every seed (seed_verdict_table) on a seeded draw, else the comparisons no larger
    than the measured seed spread (seed_sensitivity)."""
    table = seed_verdict_table(comparisons)
    if len(table):
        return table.style
    return seed_sensitivity(comparisons, spread).style.format({"difference": "{:+.0%}", "seed_spread": "{:.0%}"})


def dtype_reason(params, f: Findings) -> str:
    """Why training runs in its dtype here: the profile pins it, or the device's fast path."""
    m = f.methods.runs["lora"]
    if params.dtype == "fp32":
        return ("the profile computes in fp32 on every CPU, so that its numbers do not depend on whether the CPU "
                "multiplies bf16 natively (the provenance of this run records both dtypes' matrix-product speed)")
    if m["dtype"] == "float32":
        return ("this CPU has no fast bf16 arithmetic (the provenance of this run records both dtypes' "
                "matrix-product speed), so training uses the faster fp32")
    return f"{m['dtype']} is the fast path on this {m['device'].upper()}"


def cost_sentences(f: Findings, m: dict) -> dict[str, str]:
    """The cost section's sentences: measured ratios with what explains them at this model size.
    They describe machine measurements (no per-question outcomes); quality claims are comparisons."""
    cost, dtype = f.methods.table, f.methods.runs["lora"]["dtype"]
    out = {}
    if "full" in cost.index:
        parts = [f"LoRA trains {m['lora_trainable_share']:.1%} of the weights, takes {m['lora_step_ratio_vs_full']:.2f} "
                 f"times full fine-tuning's step time and {m['lora_peak_ratio_vs_full']:.2f} times its peak memory, and "
                 f"reaches {m['lora_quality_ratio_vs_full']:.0%} of its quality score"]
        if m["lora_step_ratio_vs_full"] > 0.8:
            saves = ("saves no step time here, though it skips the weight gradients" if m["lora_step_ratio_vs_full"] >= 1
                     else "saves less time than the weight gradients it skips suggest")
            parts.append(f"LoRA {saves}, because every step still "
                         "runs the backward pass through all layers for the activations, and at these short sequences "
                         "the fixed cost of the adapters' many small products weighs more than in a large model")
        if m["lora_peak_ratio_vs_full"] > 0.7:
            parts.append("the memory saving is smaller than T2's 3x because in a model this small the activations of "
                         "a batch, which LoRA keeps as full fine-tuning does, weigh as much as the weights, gradients "
                         "and optimizer state that LoRA saves")
        out["t1_sentence"] = "; ".join(parts) + "."
    else:
        out["t1_sentence"] = "Full fine-tuning was not in this run's methods, so the LoRA ratios are not measured."
    if "qlora" in cost.index:
        ratio = m["qlora_base_weight_ratio_vs_bf16"]
        out["qlora_sentence"] = (
            f"QLoRA's base weights take {ratio:.2f} times the bf16 size ({cost.loc['qlora'].base_weight_mb:,.0f} MB "
            f"against {m['bf16_weight_mb']:,.0f} MB). "
            + (f"That is far from 4 bits' quarter because the embedding matrix, {m['embedding_share']:.0%} of this "
               "small model's weights, stays unquantized (bitsandbytes leaves embeddings and the output head alone) "
               f"and is kept in {dtype}; in a 7B model the embeddings are a few percent of the weights. "
               if ratio > 0.35 else "")
            + f"Its steps take {cost.loc['qlora'].step_s / cost.loc['lora'].step_s:.2f} times LoRA's: the 4-bit "
            "weights are unpacked for every product.")
    else:
        out["qlora_sentence"] = "QLoRA was not in this run's methods."
    if "lora-attention" in cost.index:
        out["t3_sentence"] = (f"Adapters on the attention projections only train "
                              f"{cost.loc['lora-attention'].trainable_share:.2%} of the weights.")
    else:
        out["t3_sentence"] = "Attention-only adapters were not in this run's methods."
    out["k7_sentence"] = (f"the chosen LoRA fine-tune changes perplexity by {m['forgetting_delta_dsf']:+.1%}; on the "
                          "method facts, " + ", ".join(f"{METHOD_LABELS[k]} by {m['forgetting_delta_' + k.replace('-', '_')]:+.1%}"
                                                       for k in cost.index))
    out["s8_sentence"] = (f"The fine-tune reads {m['prompt_tokens_lora']:.0f} prompt tokens per query against "
                          f"{m['prompt_tokens_long']:.0f} for the long instruction ({m['s8_cost_saving']:.0%} less "
                          f"input to pay for), and gets {m['fields_correct_lora_best']:.0%} of the fields right, "
                          f"the long instruction {m['fields_correct_long_prompt']:.0%}.")
    return out


def glue_findings(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> None:
    """Everything the prose cites: the headline metrics, the comparison sentences, a few labels."""
    p = ch.params
    prose.glue_findings(headline.metrics, comparisons.values(), cost_sentences(f, headline))
    glue("n_structured_test", shared_n(f.behaviour.table))
    glue("json_best_condition", f.behaviour.best)
    for key, text in prose_terms().items():
        glue(key, text)
    # the plan's fitness rule for the knowledge fine-tune, applied to the development facts
    rule = the_plan().fitness["dsf"]["checkpoint"]
    glue("dev_trained_min", f"{rule['dev_trained_min']:.0%}")
    glue("heldout_slack", rule["heldout_slack"])
    glue("dsf_fitness", "reached" if f.chosen.reached else "did not reach")
    glue("curve_exposures", report.join_words([str(e) for e in p.curve_exposures]))
    glue("base_general_nll", math.log(ch.base_probe.perplexity))
    inj = f.injected
    ran = inj is not None and inj.reader is not None
    glue("injection_arms_run", report.join_words([READER_ARMS[a] for a in p.injection_arms]) if ran else "none")
    glue("injection_exposures", "; ".join(f"{READER_ARMS[a]} {report.join_words([str(e) for e in arm_exposures(p, a)])}"
                                          for a in p.injection_arms) if ran else "none")
    glue("reader_arm", f"{READER_ARMS[inj.reader]}, {inj.chosen[inj.reader].exposures} exposures per fact" if ran else "none")
    # the study's grid and seeds (a draw without the study: one rate, the curve's, and one seed per arm)
    glue("study_rates", report.join_words([f"{lr:g}" for lr in p.study_lrs]) if f.study else f"{f.curve.lr:g}")
    glue("arm_seeds", len(training_seeds(p)) if f.study else 1)
    glue("injection_rates", "; ".join(f"{READER_ARMS[a]} {c.lr:g}" for a, c in f.study.choices.items() if a != GOLD)
         if f.study and ran else "none")
    glue("chosen_is_last", "the last checkpoint" if f.chosen.exposures == f.chosen.converged else "an earlier checkpoint than the last")
    glue("dtype_name", f.methods.runs["lora"]["dtype"])
    glue("dtype_reason", dtype_reason(p, f))
    glue("max_record_tokens", max_record_tokens(json_schema(STRUCTURED_FIELDS)))
    glue("min_structured_size", min(p.structured_sizes))
    glue("max_structured_size", max(p.structured_sizes))
    glue("structured_sizes", report.join_words([str(n) for n in p.structured_sizes]))
    glue("structured_epochs", report.join_words([str(n) for n in p.structured_epochs]))
    glue("max_paraphrases", ch.best_count)
    glue("min_paraphrases", min(p.paraphrase_counts))
    glue("method_exposures", p.method_exposures)
    glue("n_candidates", LOOKALIKES + 1)
    glue("lr_factors", ", ".join(f"{x:g}" for x in p.lr_factors))
    glue("sweep_exposures", p.sweep_exposures)
    glue("sweep_methods", report.join_words([METHOD_LABELS[m] for m in p.sweep_methods]) or "none in this profile")
    glue("general_texts", report.join_words(ch.general))
    glue("lr_edge_sentence", lr_edge_sentence(f.sweep))
    # which comparisons another training seed could turn: on a seeded draw those whose verdicts on one
    # seed alone disagree (each judged, raw); else those no larger than the method run's seed spread
    by_seed = seed_verdict_table(comparisons)
    if len(by_seed):
        could = list(by_seed.index[by_seed.seeds_disagree])
    else:
        flips = seed_sensitivity(comparisons, headline["dsf_seed_spread"])
        could = [c for c, v in flips["a_seed_could_flip_it"].items() if v]
    glue("seed_spread_arm", "the gold-question fine-tune" if f.study else "LoRA's method run")  # dsf_seed_spread's arm
    glue("seed_flip_list", report.join_words(could) if could else "none of them")
    # the equivalence margins are the plan's (data/analysis_plan.yaml), in points of quality
    glue("t1_margin", f"{100 * the_plan().get('T1-lora-vs-full').margin:.0f} points")
    glue("qlora_margin", f"{100 * the_plan().get('T3-qlora-vs-lora').margin:.0f} points")


def knowledge_curve_table(ch: Chapter, f: Findings) -> pd.DataFrame:
    """Every arm's knowledge curve with what it cost and broke (curve_table), from the findings; on a
    seeded draw the study's every run (study_table)."""
    if f.study is not None:
        return study_table(f.study)
    generated = f.measured.outcomes.get(f"{dsf_name(ch.best_count)} generated", {})
    covered = share(generated) if len(generated) == ch.n_facts else float("nan")  # every test fact, or none
    injected = f.injected or no_injection()
    return curve_table(f.curve, f.chosen, injected, covered, f.knowledge.held_out(DSF_RAG_ROW), f.dsf_probe)


def save(ch: Chapter, f: Findings, headline: Measured, comparisons: dict[str, StatedComparison]) -> Path:
    """The chapter's one recording step: the set-up's and every step's outcomes, the hand-over to
    chapters 4 and 5, the headline metrics, the judged comparisons and the tables, written to the
    results file."""
    tables = Measured(tables=dict(
        knowledge_curve=knowledge_curve_table(ch, f).to_dict("records"),
        knowledge=f.knowledge.table.reset_index().to_dict("records"),
        paraphrases=f.variety.table.reset_index().to_dict("records"),
        behaviour=f.behaviour.table.reset_index().to_dict("records"),
        json_dev=f.behaviour.dev.to_dict("records"),
        methods=f.methods.table.reset_index().to_dict("records"),
        seeds=f.methods.seeds.reset_index().to_dict("records"),
        forgetting=forgetting_table(f.probes(ch)).reset_index().to_dict("records"),
        lr_sweep=f.sweep.reset_index().to_dict("records"),
        generated_answers=f.answers.table.to_dict("records") if f.answers is not None else [],
        curve_run=f.curve.train, train_runs=f.methods.runs))
    run = ChapterRun(CHAPTER, ch.params, ch.folder, ch.clock)
    return run.save(Measured.merged(ch.measured, f.measured, headline, tables), judged_of(comparisons), lm=ch.lm)
