"""Chapter 3, fine-tuning: what it teaches (facts, a JSON format), what it costs, what it forgets.

Sections, in the order the chapter runs them (prompts, question order, batch sizes and seeds are
those of the published numbers, so do not reorder them):

  sweep         each method's learning rate, chosen on validation facts that are never test facts
                (the best held-out accuracy, ties to the larger gold margin: one rule for every method)
  knowledge     the base model closed book; a LoRA fine-tune on the facts (DSF) per paraphrase count
                (the same optimizer steps for every count), asked a held-out and a trained paraphrase;
                RAG and DSF + RAG on the held-out ones; all scored by candidate log-likelihood (the
                gold value against LOOKALIKES look-alike values of its attribute), with generated
                answers on the first n_format_facts for the form of the answers
  structured    strict JSON records: the base model with a short, a long (zero-shot: no example
                values) and a long + two-example instruction, the base model under a JSON-schema
                grammar (constrained decoding) with the short one, and LoRA fine-tunes of each
                training size (one epoch each) with the short one
  methods       the first n_method_facts test facts trained with LoRA, attention-only LoRA, QLoRA and
                full fine-tuning, each at its own chosen learning rate
  forgetting    each fine-tune's log-likelihood of two kinds of general English text no fine-tune saw

Every scored condition is recorded per question (the fact's qid, the product's qid) under these
names: "<model> held-out" and "<model> trained paraphrase" (1 when the gold candidate has the
highest log-likelihood), "<model> quality" (the mean of the two), "base + RAG" and "DSF pN + RAG",
"<model> generated" (1 when a generated answer contains the gold, on the format subset), "sweep
<method> lr <lr>" (validation facts), "<JSON condition>: json_valid | schema | fields", and "NLL:
<model>" (the mean negative log-likelihood of each segment of the general texts, a continuous
outcome: lower is better).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import pandas as pd

from .. import metrics, prompts, report, results
from ..corpus.kb import STRUCTURED_FIELDS
from ..costs import load_prices
from ..drift import rate_tolerance
from ..constrained import generate_json, json_schema, max_record_tokens
from ..generation import Generation, generate
from ..plan import prose_terms, the_plan
from ..results import ChapterRun, StatedComparison, glue
from ..scoring import rank_candidates
from ..train import merged, tasks
from .common import start

CHAPTER = "03_finetune"
# Tokens of general text per forgetting outcome. The perplexity windows (512 tokens) give only two
# or three outcomes on the probe; 32-token segments give dozens while each still averages enough
# tokens that one rare word does not decide it. Neighbouring segments are not independent, so the
# forgetting comparison's interval is on the narrow side.
SEGMENT_TOKENS = 32
BASE = "base"
LOOKALIKES = 3  # look-alike values ranked against each gold answer: chance is 1 in 4
JSON_SCORES = ("json_valid", "schema", "fields")  # the suffixes of the structured conditions' names
METHOD_LABELS = {"lora": "LoRA", "lora-attention": "attention-only LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}
# Drift tolerances of measurements on a model's log-likelihood: another CPU's BLAS moves a
# perplexity by about 1e-5 of itself, a retrained adapter's forgetting delta by well under a point.
PERPLEXITY_TOL = 0.01
FORGETTING_DELTA_TOL = 0.01
ARTIFACT_MB_TOL = 0.01  # peft's adapter config names the base model's folder: the cache path moves bytes


@dataclass
class ForgettingProbe:
    """A model's perplexity on the general text and the mean NLL of each segment of it."""

    perplexity: float
    segment_nll: dict  # "<text>, tokens a-b" -> mean negative log-likelihood of those tokens
    by_text: dict = field(default_factory=dict)  # text name -> perplexity


@dataclass
class Chapter:
    """The chapter's state: parameters, results file, models, the facts, and what each section measured."""

    params: object
    run: ChapterRun
    lm: object
    embed_model: object
    kb: object
    facts: list
    general: dict  # text name -> general English text (the forgetting probe)
    val_facts: list = field(default_factory=list)  # the learning-rate sweep's facts, never test facts
    forgetting: dict = field(default_factory=dict)  # model label -> ForgettingProbe, in run order
    lrs: dict = field(default_factory=dict)  # method -> chosen learning rate
    sweep: pd.DataFrame | None = None
    answers: pd.DataFrame | None = None  # generated answers on the format subset
    dsf: dict = field(default_factory=dict)  # paraphrase count -> TrainResult
    knowledge: pd.DataFrame | None = None
    structured_test: list = field(default_factory=list)
    behaviour: pd.DataFrame | None = None
    outputs: dict = field(default_factory=dict)  # JSON condition -> answers
    best_structured: str = ""  # the LoRA JSON condition K4 tests: the one trained on the most examples
    best_structured_size: int = 0
    runs: dict = field(default_factory=dict)  # method -> TrainResult
    skipped: dict = field(default_factory=dict)  # method -> why it does not fit the device (set up before any training)
    cost: pd.DataFrame | None = None

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
                f"test facts and {len(self.val_facts)} validation facts, {len(self.facts[0].train_texts)} "
                f"training paraphrases each")


def setup(params) -> Chapter:
    """Seeds, threads and network policy; the model and the embedder; the facts; the base model's
    forgetting probe (before any training)."""
    run, lm, embed_model, kb = start(CHAPTER, params, embedder=True)
    facts = kb.sample("single", params.n_facts, params.seed)  # chapter 4 draws the same test facts
    ch = Chapter(params, run, lm, embed_model, kb, facts, tasks.general_texts(params.forgetting_chars),
                 val_facts=validation_facts(kb, facts, params.n_val_facts, params.seed))
    probe(ch, "base model", lm)
    ch.skipped = methods_that_do_not_fit(params, lm.device)
    for message in ch.skipped.values():
        print(message)
    return ch


EXAMPLE_TOKENS_MAX = 128  # a fact's training example with its chat template, padded: about 40-100 tokens


def methods_that_do_not_fit(params, device: str) -> dict[str, str]:
    """method -> why it is skipped, for the methods whose training would not fit the device's memory
    (estimated from the model's shape before any training; LoRA always runs: the chapter rests on it)."""
    from .. import models
    from ..train import memory

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


def validation_facts(kb, test: list, n: int, seed: int) -> list:
    """n single facts that are not test facts (nor about a test fact's entity and attribute), drawn
    reproducibly: the learning-rate sweep trains and scores on them only."""
    taken = {q.qid for q in test}
    pool = [q for q in kb.sample("single", len(kb.by_kind("single")), seed + 1) if q.qid not in taken]
    if len(pool) < n:
        raise ValueError(f"n_val_facts={n}: only {len(pool)} single facts are left after {len(test)} test facts; "
                         "lower n_facts or n_val_facts, or use a larger knowledge base")
    return pool[:n]


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


def probe(ch: Chapter, label: str, model_lm) -> ForgettingProbe:
    """A model's forgetting probe: its perplexity on the general texts together (the headline figure),
    per text, and its per-segment NLL on each text, recorded as the outcomes "NLL: <label>"."""
    import math

    segments, total, count, by_text = {}, 0.0, 0, {}
    for text_name, text in ch.general.items():
        ppl, token_nll = tasks.perplexity_probe(model_lm, text)
        by_text[text_name] = ppl
        total, count = total + sum(token_nll), count + len(token_nll)
        segments.update({f"{text_name}, {k}": v for k, v in segment_means(token_nll).items()})
    result = ForgettingProbe(math.exp(total / count), segments, by_text)
    ch.forgetting[label] = result
    ch.run.record(f"NLL: {label}", result.segment_nll)
    return result


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


def closed_book(ch: Chapter, model_lm, name: str, facts: list | None = None) -> tuple[float, float]:
    """Closed-book accuracy of a model on the held-out and on the first trained paraphrase of each
    fact (default: the test facts), by candidate log-likelihood, recorded as "<name> held-out",
    "<name> trained paraphrase" and "<name> quality" (the mean of the two per fact)."""
    facts = ch.facts if facts is None else facts
    qids = [q.qid for q in facts]
    texts = [q.test_text for q in facts] + [q.train_texts[0] for q in facts]
    ranking = rank_facts(ch, model_lm, [tasks.dsf_messages(t) for t in texts], facts + facts, name)
    n = len(facts)
    held = dict(zip(qids, ranking.correct[:n]))
    seen = dict(zip(qids, ranking.correct[n:]))
    tokens = [(t, 0) for t in ranking.prompt_tokens]
    ch.run.record(f"{name} held-out", held, tokens=dict(zip(qids, tokens[:n])))
    ch.run.record(f"{name} trained paraphrase", seen, tokens=dict(zip(qids, tokens[n:])))
    ch.run.record(f"{name} quality", {q: (held[q] + seen[q]) / 2 for q in held})
    return sum(held.values()) / n, sum(seen.values()) / n


def generated(ch: Chapter, model_lm, name: str, conversations: list) -> list[str]:
    """Generated answers to the format subset's conversations, recorded as "<name> generated"
    (1 when the answer contains the gold): the form of the answers, beside the ranking's verdict."""
    from .. import rag

    p, facts = ch.params, ch.format_facts
    gen = generate(model_lm, conversations, p.max_new_tokens, p.batch_size, desc=f"{name} (generated)")
    texts = [rag.strip_citations(t) for t in gen.texts]
    scores, tokens = contains_outcomes(facts, texts, gen)
    ch.run.record(f"{name} generated", scores, tokens=tokens)
    return texts


def dsf_name(count: int) -> str:
    """The outcomes' name of the DSF fine-tune on `count` paraphrases per fact."""
    return f"DSF p{count}"


def dsf_row_label(count: int) -> str:
    """Its row in the knowledge table."""
    return f"DSF, {count} paraphrase{'s' if count > 1 else ''} per fact"


def method_name(ch: Chapter, method: str) -> str:
    """The outcomes' name of a method's fine-tune; LoRA's is the knowledge section's DSF on the most
    paraphrases when the methods use every test fact (else a LoRA run of their own)."""
    shared = method == "lora" and ch.params.n_method_facts >= ch.n_facts
    return dsf_name(ch.best_count) if shared else f"DSF p{ch.best_count} {method}"


def method_label(method: str) -> str:
    """A method's fine-tune in the forgetting table."""
    return f"DSF, {METHOD_LABELS[method]}"


def answering(result):
    """A fine-tune ready to answer: a LoRA adapter on an fp32 base merged into the base weights
    (`train.merged`: the same function up to float rounding, and cheaper to run), as chapters 4 and 5
    answer with theirs; QLoRA, bf16 and full fine-tunes as they are. The adapter itself was saved when
    it was trained, and its costs measured."""
    merged(result.lm)
    return result


# ---------------------------------------------------------------------------------------------
# Learning rates: one rule for every method, on facts that are never test facts


def sweep_lrs(params, method: str) -> list[float]:
    middle = params.full_lr if method == "full" else params.lora_lr
    return [float(f"{middle * f:.3g}") for f in params.lr_factors]


def choose_learning_rates(ch: Chapter) -> pd.DataFrame:
    """Each method of sweep_methods trained on the validation facts (most paraphrases, dsf_epochs) at
    each of its learning rates and scored on their held-out paraphrases; the chosen rate has the best
    held-out accuracy, ties going to the larger mean gold margin. Methods without a sweep take LoRA's."""
    from ..train.measure import release_memory

    p, facts, rows = ch.params, ch.val_facts, []
    qids = [q.qid for q in facts]
    with ch.run.stage("lr_sweep"):
        for method in [m for m in p.sweep_methods if m not in ch.skipped]:
            for lr in sweep_lrs(p, method):
                fit = answering(tasks.train_dsf(p, facts, ch.best_count, lr=lr, method=method, label=f"sweep-{method}"))
                name = f"sweep {method} lr {lr:g}"
                ranking = rank_facts(ch, fit.lm, [tasks.dsf_messages(q.test_text) for q in facts], facts, name)
                ch.run.record(name, dict(zip(qids, ranking.correct)))
                rows.append({"method": method, "lr": lr, "val_heldout": ranking.accuracy,
                             "val_margin": sum(ranking.margins) / len(facts), "train_s": fit.metrics["train_s"]})
                del fit
                release_memory()
    table = pd.DataFrame(rows)
    ch.lrs = pick_lrs(table, [m for m in p.methods if m not in ch.skipped])
    table["chosen"] = [ch.lrs[m] == lr for m, lr in zip(table.method, table.lr)]
    ch.sweep = table.set_index(["method", "lr"])
    return ch.sweep


def pick_lrs(sweep: pd.DataFrame, methods: list) -> dict[str, float]:
    """The rule, the same for every method: the learning rate with the best validation held-out
    accuracy, ties to the larger mean gold margin (then the smaller rate); a method without a sweep
    of its own takes LoRA's."""
    chosen = {}
    for method, part in sweep.groupby("method", sort=False):
        best = part.assign(neg_lr=-part.lr).sort_values(["val_heldout", "val_margin", "neg_lr"]).iloc[-1]
        chosen[method] = float(best.lr)
    return {m: chosen.get(m, chosen["lora"]) for m in methods}


def lr_edge_sentence(sweep: pd.DataFrame) -> str:
    """The methods whose chosen rate is the largest or smallest their sweep tried: their best rate
    may lie beyond the grid, which the reader should know before comparing methods."""
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


def sweep_style(table: pd.DataFrame):
    return table.style.format({"val_heldout": "{:.0%}", "val_margin": "{:+.2f}", "train_s": "{:.0f} s"})


# ---------------------------------------------------------------------------------------------
# Knowledge: fine-tuning on facts, closed book, beside RAG


def knowledge(ch: Chapter) -> pd.DataFrame:
    """The base model closed book, a DSF fine-tune per paraphrase count (held-out and trained
    paraphrase; the same optimizer steps for every count, at LoRA's chosen learning rate), and RAG
    with the base and with the most-paraphrase DSF model on the held-out questions, all ranked by
    candidate log-likelihood; generated answers on the format subset. Hands the DSF adapter to
    chapter 4 (artifacts["dsf_adapter"], tables["dsf_facts"])."""
    from .. import rag, settings

    if not ch.lrs:
        choose_learning_rates(ch)
    p, run, lr = ch.params, ch.run, ch.lrs["lora"]
    rows = []
    held, seen = closed_book(ch, ch.lm, BASE)
    rows.append({"condition": "base model, closed book", "held_out": held, "trained_paraphrase": seen})
    with run.stage("dsf_train"):
        for count in p.paraphrase_counts:
            ch.dsf[count] = answering(tasks.train_dsf(p, ch.facts, count, lr=lr))
            held, seen = closed_book(ch, ch.dsf[count].lm, dsf_name(count))
            rows.append({"condition": dsf_row_label(count), "held_out": held, "trained_paraphrase": seen,
                         "examples": len(tasks.dsf_examples(ch.facts, count)),
                         "steps": ch.dsf[count].metrics["steps"], "train_s": ch.dsf[count].metrics["train_s"]})
    dsf_best = ch.dsf[ch.best_count]
    run.artifacts["dsf_adapter"] = str(dsf_best.artifact)
    run.tables["dsf_facts"] = [q.qid for q in ch.facts]
    chroma_folder = settings.run_dir() / "chroma" / CHAPTER
    shutil.rmtree(chroma_folder, ignore_errors=True)
    store = rag.ChunkStore("kb-256", path=chroma_folder, embed_model=ch.embed_model, chunk_size=256, chunk_overlap=16)
    store.ingest(rag.kb_pages(ch.kb, 8))
    ranked = rag.Retriever(store, ch.embed_model).search([q.test_text for q in ch.facts], p.rag_top_k, "hybrid")
    rag_conversations = [rag.rag_messages(q.test_text, hits) for q, hits in zip(ch.facts, ranked)]
    qids = [q.qid for q in ch.facts]
    labels = {"base + RAG": f"base model + RAG (top-{p.rag_top_k})",
              f"{dsf_name(ch.best_count)} + RAG": f"DSF ({ch.best_count} paraphrases) + RAG"}
    with run.stage("rag"):
        for (name, label), model_lm in zip(labels.items(), (ch.lm, dsf_best.lm)):
            ranking = rank_facts(ch, model_lm, rag_conversations, ch.facts, name)
            run.record(name, ranking.outcomes(qids), tokens={q: (t, 0) for q, t in zip(qids, ranking.prompt_tokens)})
            rows.append({"condition": label, "held_out": ranking.accuracy})
    with run.stage("format_view"):
        k = len(ch.format_facts)
        closed = [tasks.dsf_messages(q.test_text) for q in ch.format_facts]
        ch.answers = pd.DataFrame({
            "question": [q.test_text for q in ch.format_facts], "gold": [q.answer for q in ch.format_facts],
            "base, closed book": generated(ch, ch.lm, BASE, closed),
            dsf_row_label(ch.best_count): generated(ch, dsf_best.lm, dsf_name(ch.best_count), closed),
            "base + RAG": generated(ch, ch.lm, "base + RAG", rag_conversations[:k]),
            "DSF + RAG": generated(ch, dsf_best.lm, f"{dsf_name(ch.best_count)} + RAG", rag_conversations[:k])})
    for count, result in ch.dsf.items():  # only the most-paraphrase model is used again
        if count != ch.best_count:
            result.lm = None
    ch.knowledge = pd.DataFrame(rows).set_index("condition")
    ch.knowledge.insert(0, "n", ch.n_facts)  # every row asks the same test facts
    return ch.knowledge


def knowledge_style(table: pd.DataFrame):
    return table.style.format({"n": "{:.0f}", "held_out": "{:.0%}", "trained_paraphrase": "{:.0%}", "examples": "{:.0f}",
                               "steps": "{:.0f}", "train_s": "{:.0f} s"}, na_rep="-")


def plot_knowledge(table: pd.DataFrame):
    """Held-out and trained-paraphrase accuracy per condition, as paired horizontal bars with 95 %
    Wilson intervals."""
    from ..stats import wilson_interval

    def wilson(col):
        bounds = [wilson_interval(v * n, int(n)) if pd.notna(v) else (v, v) for v, n in zip(table[col], table["n"])]
        return [lo for lo, _ in bounds], [hi for _, hi in bounds]

    return report.paired_bars(table, "held_out", "trained_paraphrase", ("held-out paraphrase", "trained paraphrase"),
                              f"gold ranked first of {LOOKALIKES + 1} (chance {1 / (LOOKALIKES + 1):.0%}; "
                              f"n = {int(table['n'].iloc[0])}, 95 % intervals)",
                              "Facts: fine-tuned closed book against RAG",
                              intervals={c: wilson(c) for c in ("held_out", "trained_paraphrase")})


def structured_outcomes(gen: Generation, questions: list) -> dict[str, dict]:
    """Per-question JSON validity, exact-schema adherence (1 or 0) and share of fields right."""
    if len(questions) != len(gen.texts):
        raise ValueError(f"{len(questions)} products but {len(gen.texts)} answers: they must pair up in order")
    return {"json_valid": {q.qid: metrics.json_valid(t) for t, q in zip(gen.texts, questions)},
            "schema": {q.qid: metrics.schema_adherence(t, STRUCTURED_FIELDS) for t, q in zip(gen.texts, questions)},
            "fields": {q.qid: metrics.fields_correct(t, q.fields) for t, q in zip(gen.texts, questions)}}


def lora_structured_name(size: int) -> str:
    return f"LoRA on {size} examples, short instruction"


# The JSON conditions on the base model. The long instruction is zero-shot: it names the keys and
# their types but holds no example values (an example name in it was copied into the answers).
SHORT, ZERO_SHOT, FEW_SHOT = "base, short instruction", "base, long instruction", "base, long instruction + 2 examples"
CONSTRAINED = "base, short instruction + JSON grammar"
JSON_COLUMNS = {"json_valid": "json_valid", "schema_adherence": "schema", "fields_correct": "fields"}


def structured(ch: Chapter) -> pd.DataFrame:
    """The base model with a short, a long (zero-shot) and a long + two-example instruction, the base
    model under the record's JSON-schema grammar with the short instruction, then a LoRA fine-tune
    per training size (one epoch each) with the short one; each condition's row (rates with 95 %
    intervals) and per-product outcomes."""
    from ..stats import mean_interval, wilson_interval
    from ..train import train
    from ..train.measure import release_memory

    p, run, kb = ch.params, ch.run, ch.kb
    test = ch.structured_test = kb.sample("structured", p.n_structured_test, p.seed)
    shots = [(m.messages[-1]["content"], m.answer) for m in
             tasks.structured_examples(2, p.kb_seed, p.kb, prompts.STRUCTURED_SYSTEM_LONG, first_seed=p.kb_seed + 1000)]
    conditions = {SHORT: (prompts.STRUCTURED_SYSTEM_SHORT, None), ZERO_SHOT: (prompts.STRUCTURED_SYSTEM_LONG, None),
                  FEW_SHOT: (prompts.STRUCTURED_SYSTEM_LONG, shots)}
    schema = json_schema(STRUCTURED_FIELDS)

    def answer(model_lm, system, examples, name, constrained=False, **extra):
        convs = [tasks.structured_messages(kb, q, q.test_text, system, examples) for q in test]
        if constrained:  # enough new tokens for the longest record the grammar allows: it always closes
            gen = generate_json(model_lm, convs, schema, max_record_tokens(schema), p.batch_size, desc=name)
        else:
            gen = generate(model_lm, convs, p.structured_max_new_tokens, p.batch_size, desc=name)
        row, scored = tasks.structured_row(name, gen, test, p.price_per_mtok, **extra), structured_outcomes(gen, test)
        for column, score in JSON_COLUMNS.items():
            outcomes = scored[score]
            run.record(f"{name}: {score}", outcomes,
                       tokens={q.qid: (gen.prompt_tokens[i], gen.completion_tokens[i]) for i, q in enumerate(test)})
            values = list(outcomes.values())
            low, high = wilson_interval(sum(values), len(values)) if score != "fields" else mean_interval(values)
            row.update({f"{column}_low": low, f"{column}_high": high})
        ch.outputs[name] = gen.texts
        return row

    rows = []
    with run.stage("structured"):
        for name, (system, examples) in conditions.items():
            rows.append(answer(ch.lm, system, examples, name))
        rows.append(answer(ch.lm, prompts.STRUCTURED_SYSTEM_SHORT, None, CONSTRAINED, constrained=True))
        for size in p.structured_sizes:
            fit = answering(train(p.model, tasks.structured_examples(size, p.kb_seed, p.kb),
                                  tasks.lora_config(p, p.structured_epochs), label=f"json-{size}"))
            rows.append(answer(fit.lm, prompts.STRUCTURED_SYSTEM_SHORT, None, lora_structured_name(size),
                               train_s=fit.metrics["train_s"]))
            if size == max(p.structured_sizes):
                probe(ch, f"JSON, LoRA ({size} examples)", fit.lm)
            del fit
            release_memory()
    ch.behaviour = pd.DataFrame(rows).set_index("condition")
    # K4's fine-tune is declared, not picked: the one trained on the most examples (picking the best
    # size on these test products would favour the fine-tune by its luck on them)
    ch.best_structured_size = max(p.structured_sizes)
    ch.best_structured = lora_structured_name(ch.best_structured_size)
    return ch.behaviour


def behaviour_style(table: pd.DataFrame):
    """Each rate with its 95 % interval (Wilson; a bootstrap for the mean share of fields right)."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_low", "_high"))])
    for column in JSON_COLUMNS:
        if f"{column}_low" in table:
            shown[column] = [f"{v:.0%} [{lo:.0%}, {hi:.0%}]" for v, lo, hi in
                             zip(table[column], table[f"{column}_low"], table[f"{column}_high"])]
    return shown.style.format({"prompt_tokens": "{:.0f}", "completion_tokens": "{:.1f}",
                               "cost_per_1k_usd": "${:.3f}", "train_s": "{:.0f} s"}, na_rep="-")


def plot_structured(table: pd.DataFrame):
    """Valid JSON, exact schema and fields right per condition, with 95 % intervals."""
    import matplotlib.pyplot as plt
    import numpy as np

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


def output_examples(ch: Chapter, n: int = 3) -> pd.DataFrame:
    """The first n products' answers under every JSON condition."""
    return pd.DataFrame({c: o[:n] for c, o in ch.outputs.items()}).T.rename(columns=lambda i: f"product {i + 1}")


# ---------------------------------------------------------------------------------------------
# LoRA, QLoRA and full fine-tuning


COST_COLUMNS = ("trainable_share", "step_s", "tokens_per_s", "mfu", "peak_mb", "base_weight_mb", "artifact_mb")


def methods(ch: Chapter) -> pd.DataFrame:
    """The first n_method_facts test facts (most paraphrases) trained with every method of `methods`,
    each at its own chosen learning rate and the same steps; LoRA is the knowledge section's run when
    the methods use every test fact. Each method's closed-book quality, training costs and forgetting
    probe, one row per method."""
    from ..train.measure import release_memory

    p, facts = ch.params, ch.method_facts
    shared = p.n_method_facts >= ch.n_facts
    ch.runs = {"lora": ch.dsf[ch.best_count]} if shared else {}
    rows = []
    with ch.run.stage("methods"):
        for name in [m for m in p.methods if m not in ch.skipped]:
            if name not in ch.runs:
                ch.runs[name] = answering(tasks.train_dsf(p, facts, ch.best_count, lr=ch.lrs[name], method=name,
                                                          label=f"dsf-p{ch.best_count}-{name}"))
            result = ch.runs[name]
            if name == "lora" and shared:  # scored in the knowledge section
                row = ch.knowledge.loc[dsf_row_label(ch.best_count)]
                held, seen = row.held_out, row.trained_paraphrase
            else:
                held, seen = closed_book(ch, result.lm, method_name(ch, name), facts)
            probe(ch, method_label(name), result.lm)
            rows.append({"method": name, "lr": ch.lrs[name], "held_out": held, "trained_paraphrase": seen,
                         "quality": (held + seen) / 2, **{k: result.metrics[k] for k in COST_COLUMNS}})
            if not (name == "lora" and shared):
                result.lm = None
            release_memory()
    ch.cost = pd.DataFrame(rows).set_index("method")
    return ch.cost


def cost_style(table: pd.DataFrame):
    return table.style.format({"lr": "{:.1e}", "held_out": "{:.0%}", "trained_paraphrase": "{:.0%}", "quality": "{:.0%}",
                               "trainable_share": "{:.2%}", "step_s": "{:.2f} s", "tokens_per_s": "{:.0f}",
                               "mfu": "{:.0%}", "peak_mb": "{:,.0f} MB", "base_weight_mb": "{:,.0f} MB",
                               "artifact_mb": "{:,.1f} MB"})


# ---------------------------------------------------------------------------------------------
# Forgetting


def forgetting_table(ch: Chapter) -> pd.DataFrame:
    """Perplexity on the general texts (together and per text) per model, and the change of the
    together figure against the base model."""
    table = pd.DataFrame({"perplexity": {k: v.perplexity for k, v in ch.forgetting.items()}}).rename_axis("model")
    table["change"] = table.perplexity / ch.forgetting["base model"].perplexity - 1
    for text_name in ch.general:
        table[f"{text_name} change"] = [v.by_text.get(text_name, float("nan")) / ch.forgetting["base model"].by_text[text_name] - 1
                                        if v.by_text else float("nan") for v in ch.forgetting.values()]
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


def headline_metrics(ch: Chapter) -> dict:
    """The chapter's headline metrics, each declared with its kind on the results file."""
    run, p, n = ch.run, ch.params, ch.n_facts
    k, b, cost = ch.knowledge, ch.behaviour, ch.cost
    m: dict = {}

    def put(key, value, kind, **rule):
        m[key] = run.metric(key, value, kind, **rule)

    best_count = ch.best_count
    dsf_row = k.loc[dsf_row_label(best_count)]
    put("base_closed_contains", k.iloc[0].held_out, "rate", n=n)
    put("dsf_heldout_contains", dsf_row.held_out, "rate", n=n)
    put("dsf_train_contains", dsf_row.trained_paraphrase, "rate", n=n)
    put("rag_contains_same_questions", k.iloc[-2].held_out, "rate", n=n)
    put("dsf_plus_rag_contains", k.iloc[-1].held_out, "rate", n=n)
    put("n_facts", n, "exact")
    for count in p.paraphrase_counts:
        r = k.loc[dsf_row_label(count)]
        put(f"dsf_p{count}_heldout_contains", r.held_out, "rate", n=n)
        put(f"dsf_p{count}_train_contains", r.trained_paraphrase, "rate", n=n)
        put(f"dsf_p{count}_n", n, "exact")
    # The rates above rank the gold value against LOOKALIKES look-alikes: guessing scores this.
    put("knowledge_chance", 1 / (LOOKALIKES + 1), "exact")
    for key in ("base_closed", "dsf_heldout", "dsf_train", "rag", "dsf_plus_rag"):
        put(f"{key}_n", n, "exact")
    put("val_facts_n", len(ch.val_facts), "exact")
    put("methods_n", len(ch.method_facts), "exact")
    put("format_n", len(ch.format_facts), "exact")
    generated_keys = {"base": BASE, "dsf": dsf_name(best_count), "rag": "base + RAG",
                      "dsf_plus_rag": f"{dsf_name(best_count)} + RAG"}
    for key, name in generated_keys.items():
        put(f"{key}_generated_contains", sum(run.outcomes[f"{name} generated"].values()) / len(ch.format_facts),
            "rate", n=len(ch.format_facts))
    for method, lr in ch.lrs.items():
        put(f"{method.replace('-', '_')}_lr_chosen", lr, "choice")

    n_json = len(ch.structured_test)
    tuned = b[b.index.str.startswith("LoRA")]
    best, long_prompt, zero_shot = ch.best_structured, b.loc[ZERO_SHOT], b.loc[SHORT]
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
        put(f"schema_adherence_lora_{size}", tuned.loc[lora_structured_name(size), "schema_adherence"], "rate", n=n_json)
        put(f"fields_correct_lora_{size}", tuned.loc[lora_structured_name(size), "fields_correct"], "mean", n=n_json)
    for condition in ("zero_shot", "long_prompt", "few_shot", "constrained", "lora_best"):  # every JSON row: the same products
        put(f"json_{condition}_n", n_json, "exact")
    put("json_lora_best_size", ch.best_structured_size, "choice")

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
    put("peak_gflops", ch.runs["lora"].metrics["peak_gflops"], "machine")
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

    ppl = forgetting_table(ch)
    put("perplexity_base", ch.forgetting["base model"].perplexity, "derived", tol=PERPLEXITY_TOL)
    for method in cost.index:
        key = "forgetting_delta_" + method.replace("-", "_")
        put(key, ppl.loc[method_label(method), "change"], "derived", tol=FORGETTING_DELTA_TOL)
    put("model_params_m", ch.lm.n_params() / 1e6, "exact")
    # The questions behind each headline figure: a change of n is a change of design, never drift.
    put("knowledge_n", n, "exact")
    put("structured_n", n_json, "exact")
    put("forgetting_segments_n", len(ch.forgetting["base model"].segment_nll), "exact")
    return m


# ---------------------------------------------------------------------------------------------
# Comparisons and sentences


def state_comparisons(ch: Chapter) -> dict[str, StatedComparison]:
    """The chapter's paired comparisons (claim ids of CLAIMS.md), stored on the results file; keyed
    by glue key. Directions are the claims' own, whatever this run measured."""
    run, p = ch.run, ch.params
    out: dict[str, StatedComparison] = {}

    def state(claim, a, b, a_label, b_label, pct=True):
        out[claim] = StatedComparison(claim, run.compare(claim, a, b),
                                    a_label, b_label, pct=pct)

    def missing(claim, why):
        out[claim] = StatedComparison(claim, None, missing=why)

    top = ch.best_count
    dsf, dsf_label = dsf_name(top), f"DSF ({top} paraphrases)"
    held = f"{dsf} held-out"
    state("K1-rag-vs-dsf", "base + RAG", held, "RAG", f"closed-book {dsf_label}")
    # K1's other face: a fine-tune that learnt the facts would answer new phrasings as well as trained ones.
    state("K1-memorisation", f"{dsf} trained paraphrase", held, "trained phrasings", "held-out phrasings")
    low = min(p.paraphrase_counts)
    if low < top:
        state("K5-paraphrases", held, f"{dsf_name(low)} held-out",
              f"{top} paraphrases per fact", f"{low} paraphrase{'s' if low > 1 else ''} per fact")
    else:
        missing("K5-paraphrases", "paraphrase_counts has one count")
    state("K6-dsf-plus-rag", f"{dsf} + RAG", held, f"{dsf_label} + RAG", f"{dsf_label} alone")
    state("K5-rag-vs-dsf-rag", "base + RAG", f"{dsf} + RAG", "RAG alone", f"{dsf_label} + RAG")

    best = ch.best_structured
    # K4: the fine-tune against zero-shot prompting at its strongest (the long instruction, no example values).
    state("K4-json", f"{best}: json_valid", f"{ZERO_SHOT}: json_valid",
          f"the best fine-tune ({best})", "the zero-shot long instruction")
    # K4 says the fine-tune wins "even with examples in context": the exact schema against the few-shot prompt.
    state("K4-few-shot", f"{best}: schema", f"{FEW_SHOT}: schema",
          "the best fine-tune", "two worked examples in the prompt")
    # K4's limit: constrained decoding forces the schema on the base model, so what is left to win is the values.
    state("K4-constrained", f"{best}: fields", f"{CONSTRAINED}: fields",
          "the best fine-tune", "the base model under a JSON-schema grammar")
    sizes = p.structured_sizes
    if len(sizes) > 1:
        big, small = max(sizes), min(sizes)
        state("T4-sizes", f"{lora_structured_name(big)}: schema", f"{lora_structured_name(small)}: schema",
              f"{big} training examples", f"{small} training examples")
    else:
        missing("T4-sizes", "structured_sizes has one size")

    quality = lambda method: f"{method_name(ch, method)} quality"  # noqa: E731
    if "full" in ch.runs:
        state("T1-lora-vs-full", quality("lora"), quality("full"), "LoRA", "full fine-tuning")
    else:
        missing("T1-lora-vs-full", "full fine-tuning is not in methods")
    if "qlora" in ch.runs:
        state("T3-qlora-vs-lora", quality("qlora"), quality("lora"), "QLoRA", "LoRA")
    else:
        missing("T3-qlora-vs-lora", "QLoRA is not in methods")
    if "lora-attention" in ch.runs:
        state("T3-attention-only", quality("lora"), quality("lora-attention"),
              "adapters on every linear layer", "attention projections only")
    else:
        missing("T3-attention-only", "attention-only LoRA is not in methods")
    # K7: fine-tuning forgets, each fine-tune's loss on general text against the base model's (per
    # segment, lower is better); full fine-tuning against LoRA is a comparison of its own.
    base_nll = "NLL: base model"
    for method in ("lora", "qlora", "full"):
        if f"NLL: {method_label(method)}" in run.outcomes and base_nll in run.outcomes:
            state(f"K7-forgetting-{method}", f"NLL: {method_label(method)}", base_nll, METHOD_LABELS[method],
                  "the base model", pct=False)
        else:
            missing(f"K7-forgetting-{method}", f"{METHOD_LABELS[method]} is not in methods")
    if f"NLL: {method_label('full')}" in run.outcomes and f"NLL: {method_label('lora')}" in run.outcomes:
        state("K7-full-vs-lora", f"NLL: {method_label('full')}", f"NLL: {method_label('lora')}",
              "full fine-tuning", "LoRA", pct=False)
    else:
        missing("K7-full-vs-lora", "full fine-tuning is not in methods")
    return out


def dtype_reason(ch: Chapter) -> str:
    m = ch.runs["lora"].metrics
    if m["dtype"] == "float32":
        return ("this CPU has no fast bf16 arithmetic (the provenance of this run records both dtypes' "
                "matrix-product speed), so training uses the faster fp32")
    return f"{m['dtype']} is the fast path on this {m['device'].upper()}"


def cost_sentences(ch: Chapter, m: dict) -> dict[str, str]:
    """The cost section's sentences: measured ratios with what explains them at this model size.
    They describe machine measurements (no per-question outcomes); quality claims are comparisons."""
    cost, dtype = ch.cost, ch.runs["lora"].metrics["dtype"]
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
    forgetting = f"LoRA raises perplexity by {m['forgetting_delta_lora']:.1%}"
    out["k7_sentence"] = (f"full fine-tuning raises perplexity by {m['forgetting_delta_full']:.1%} and LoRA by "
                          f"{m['forgetting_delta_lora']:.1%}" if "forgetting_delta_full" in m else forgetting)
    out["s8_sentence"] = (f"The fine-tune reads {m['prompt_tokens_lora']:.0f} prompt tokens per query against "
                          f"{m['prompt_tokens_long']:.0f} for the long instruction ({m['s8_cost_saving']:.0%} less "
                          f"input to pay for), and gets {m['fields_correct_lora_best']:.0%} of the fields right, "
                          f"the long instruction {m['fields_correct_long_prompt']:.0%}.")
    return out


def glue_findings(ch: Chapter, headline: dict, comparisons: dict[str, StatedComparison]) -> None:
    """Everything the prose cites: the headline metrics, the comparison sentences, a few labels."""
    results.glue_findings(headline, comparisons.values(), cost_sentences(ch, headline))
    glue("n_structured_test", len(ch.structured_test))
    glue("json_best_condition", ch.best_structured)
    for key, text in prose_terms().items():
        glue(key, text)
    # the plan's fitness rule for the knowledge fine-tune: chapter 7 gates every comparison that reads it
    rule = the_plan().fitness["dsf"]
    glue("dsf_fitness_min", f"{rule['min']:.0%}")
    reached = headline.get(rule["metric"])
    glue("dsf_fitness", "meets" if reached is not None and reached >= rule["min"] else "misses")
    glue("dtype_name", ch.runs["lora"].metrics["dtype"])
    glue("dtype_reason", dtype_reason(ch))
    glue("max_record_tokens", max_record_tokens(json_schema(STRUCTURED_FIELDS)))
    glue("min_structured_size", min(ch.params.structured_sizes))
    glue("max_structured_size", max(ch.params.structured_sizes))
    glue("max_paraphrases", ch.best_count)
    glue("n_candidates", LOOKALIKES + 1)
    glue("lr_factors", ", ".join(f"{f:g}" for f in ch.params.lr_factors))
    glue("sweep_methods", report.join_words([METHOD_LABELS[m] for m in ch.params.sweep_methods]))
    unswept = [METHOD_LABELS[m] for m in ch.params.methods if m not in ch.params.sweep_methods]
    glue("unswept_sentence", f"The others ({report.join_words(unswept)}) take LoRA's choice." if unswept else
         "Every method has a sweep of its own.")
    glue("general_texts", report.join_words(ch.general))
    glue("lr_edge_sentence", lr_edge_sentence(ch.sweep))
    low = min(ch.params.paraphrase_counts)
    glue("low_paraphrase_epochs", tasks.dsf_epochs(ch.params, low))
    glue("top_paraphrase_epochs", tasks.dsf_epochs(ch.params, ch.best_count))
    # the equivalence margins are the plan's (data/analysis_plan.yaml), in points of quality
    glue("t1_margin", f"{100 * the_plan().get('T1-lora-vs-full').margin:.0f} points")
    glue("qlora_margin", f"{100 * the_plan().get('T3-qlora-vs-lora').margin:.0f} points")


def save(ch: Chapter):
    run = ch.run
    run.tables.update(knowledge=ch.knowledge.reset_index().to_dict("records"),
                      behaviour=ch.behaviour.reset_index().to_dict("records"),
                      methods=ch.cost.reset_index().to_dict("records"),
                      forgetting=forgetting_table(ch).reset_index().to_dict("records"),
                      lr_sweep=ch.sweep.reset_index().to_dict("records"),
                      generated_answers=ch.answers.to_dict("records"),
                      train_runs={name: r.metrics for name, r in ch.runs.items()})
    return run.save(lm=ch.lm)
