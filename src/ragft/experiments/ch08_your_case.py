"""Chapter 8, your own case: the book's ladder (closed book, RAG, a knowledge fine-tune, the fine-tune
with RAG, RAFT with RAG) run on the reader's documents and questions, judged by the analysis plan's
template for a reader's case and priced by chapter 6's cost model.

Steps, in the order the chapter runs them; each takes its inputs and returns its result (the Case
holds the set-up only):

  read_inputs   the documents, the questions the arms are judged on and the training questions, all
                checked, and the questions split by source document into development and test
                questions, before any model loads (CaseInputs; bad inputs raise CorpusError)
  estimate      the training time, from the training data's tokens and this host's measured speed,
                said before anything trains (Estimate)
  setup         seeds, the language model and the embedder, a fresh Chroma folder (Case)
  index         the documents in Chroma at every chunk size (Index)
  choose_retrieval  the chunk size and top-k with the best RAG answers on the development questions
                (RetrievalChoice); the test questions' retrieval recall at that choice
  base_arms     the base model closed book and with RAG, on the test questions (a list of Asked)
  fine_tune     the knowledge fine-tune's arms (dsf_arms: the documents as they are, questions a rule
                writes from them, the reader's training questions, or those and the documents together),
                each LoRA at a constant rate on its own data, scored after each of dsf_epochs on its own training data and on the
                development questions; the arm and checkpoint with the best development accuracy
                stands, fit when it has learnt its own training data as the plan's rule asks
                (FineTune); then asked the test questions closed book and with RAG
  raft          RAFT trained on the training questions with their oracle chunk and retrieved
                distractors; its fitness on its own training examples; asked the test questions with
                the chosen chunks (Raft)
  judged        every arm's scores with intervals and the plan's case comparisons, Holm-adjusted as a
                family of their own (Judged)
  priced        each arm's monthly cost at the reader's volumes (chapter 6's model), from this run's
                tokens per query and training tokens (Priced)
  closing       the closing table: which arm answers best, by how much, at what cost, how sure

Every arm's outcome per test question is recorded as "case: <arm>" (1 when the generated answer
contains a gold answer), so each comparison recomputes from the results file.
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import costs, host, metrics, models, raft, rag, settings
from ..corpus import injection
from ..plan import CASE, adjust, the_plan
from ..rag import CorpusError
from ..results import ChapterRun, Clock, Measured, judged_of, state_comparisons
from ..prose import glue, glue_metrics
from ..stats import DIRECTION_ONLY, NOT_DECIDED, SUPPORTED, wilson_interval
from ..text import ANOTHER_THING, NEAR_DUPLICATE, SAME, near_duplicate, question_key
from ..train import tasks, units
from ..train.data import TrainingDataError, example, tokenize
from ..train.tasks import dsf_messages
from ..train.measure import release_memory
from .common import answer_outcomes, start

CHAPTER = "08_your_case"
SAMPLE = Path(__file__).resolve().parents[3] / "data" / "sample_case"
# The arms, by the condition names the plan's case comparisons use (data/analysis_plan.yaml `case`)
BASE, RAG, DSF, DSF_RAG, RAFT_RAG = "case: base", "case: base + RAG", "case: DSF", "case: DSF + RAG", "case: RAFT + RAG"
ARMS = (BASE, RAG, DSF, DSF_RAG, RAFT_RAG)
LABELS = {BASE: "base, closed book", RAG: "base + RAG", DSF: "fine-tune (DSF), closed book", DSF_RAG: "DSF + RAG",
          RAFT_RAG: "RAFT + RAG"}
KEYS = {BASE: "base", RAG: "rag", DSF: "dsf", DSF_RAG: "dsf_rag", RAFT_RAG: "raft_rag"}  # metric prefixes
STYLE = {BASE: "closed", RAG: "rag", DSF: "closed", DSF_RAG: "rag", RAFT_RAG: "raft"}  # ragft.raft prompt styles
COMPARISONS = ("Y-rag-vs-base", "Y-dsf-vs-base", "Y-rag-vs-dsf", "Y-dsf-rag-vs-rag", "Y-raft-vs-rag")


# ---------------------------------------------------------------------------------------------
# Inputs, checked before any model loads


@dataclass(frozen=True)
class CaseInputs:
    corpus: object  # rag.Corpus
    dev: list  # QAItems: every choice is made on these
    test: list  # QAItems: scored once
    train: list  # QAItems the fine-tunes train on (empty: none given)
    sources: dict  # judged question id -> the document that answers it (its doc_id, else the first holding an answer)
    train_sources: dict  # the same for the training questions (a file of its own: its ids may repeat the other's)
    dev_docs: tuple
    test_docs: tuple
    left_out: tuple  # ids of unanswerable questions (answers: []), which this chapter does not judge
    files: dict  # what was read: corpus_dir, questions_file, train_questions_file

    def split_table(self) -> pd.DataFrame:
        rows = [{"set": "development", "questions": len(self.dev), "documents": ", ".join(self.dev_docs)},
                {"set": "test", "questions": len(self.test), "documents": ", ".join(self.test_docs)},
                {"set": "training questions", "questions": len(self.train),
                 "documents": ", ".join(sorted({self.train_sources[it.qid] for it in self.train})) or "–"}]
        if self.left_out:
            rows.append({"set": "left out: answers [] (this chapter judges answers)", "questions": len(self.left_out),
                         "documents": "–"})
        return pd.DataFrame(rows).set_index("set")


def near_duplicates(train: list, judged: list, tfile: str, qfile: str) -> list[tuple]:
    """The (training, judged) pairs that are one question in other clothes (ragft.text.near_duplicate),
    less those a training line confirms are two ("distinct_from"). Pairs that share most words but
    differ in one that names another thing (a number, a name, north and south) are two questions: said
    in a line each, and kept."""
    keys = {id(it): question_key(it.question) for it in (*train, *judged)}  # each question normalised once
    same = []
    for t in train:
        for j in judged:
            found = near_duplicate(keys[id(t)], keys[id(j)])
            if found is None:
                continue
            where = f"{Path(tfile).name} line {t.line} {t.question!r} and {Path(qfile).name} line {j.line} {j.question!r}"
            if j.qid in t.distinct_from:
                print(f"Kept as two questions, as the training line says (distinct_from): {where}")
            elif found[0] == ANOTHER_THING:
                print(f"Kept as two questions (they differ in {', '.join(found[1])}, which name another thing; if "
                      f"they are one question after all, leave the training line out): {where}")
            elif found[0] == SAME:
                same.append((t, j))
    return same


def read_inputs(params) -> CaseInputs:
    """The reader's case, read and checked: refused with a CorpusError that says what is missing, for
    a folder with no usable document, a question whose answers appear in no document (no arm could be
    judged on it fairly), a training question that is a judged one in other clothes (`near_duplicates`), and too few questions
    for a split by document (at least min_dev development and min_test test questions, from two or
    more documents)."""
    sample = not params.corpus_dir
    folder = params.corpus_dir or str(SAMPLE / "docs")
    qfile = params.questions_file or (str(SAMPLE / "questions.jsonl") if sample else "")
    if not qfile:
        raise CorpusError("questions_file is empty: with your own corpus_dir, give the questions the arms are judged on "
                          '(JSONL, one {"question": "...", "answers": ["..."], "doc_id": "..."} a line)')
    tfile = params.train_questions_file or (str(SAMPLE / "train_questions.jsonl") if sample else "")
    corpus = rag.load_folder(folder, params.max_file_mb)
    documents, skipped = {s.doc_id for s in corpus.sources}, {s.path: s.reason for s in corpus.skipped}
    cut = params.max_questions or None
    asked = rag.load_questions(qfile, documents, skipped)[:cut]
    train = (rag.load_questions(tfile, documents, skipped) if tfile else [])[:cut]
    judged = [it for it in asked if it.kind != "unanswerable"]
    left_out = tuple(it.qid for it in asked if it.kind == "unanswerable")
    sources, train_sources = answer_sources(judged, corpus, qfile), answer_sources(train, corpus, tfile)
    same = near_duplicates(train, judged, tfile, qfile)
    if same:
        t, j = same[0]
        raise CorpusError(f"{len(same)} training question(s) are questions the arms are judged on, in other clothes "
                          f"(case, punctuation, white space, invisible characters, word order, or {NEAR_DUPLICATE:.0%} "
                          f"of the shorter one's content words shared, the others ordinary words): first, "
                          f"{Path(tfile).name} line {t.line} {t.question!r} and {Path(qfile).name} line {j.line} "
                          f"{j.question!r}. A fine-tune trained on a test question measures recall of it, not knowledge: "
                          f'ask about other facts, leave them out of train_questions_file, or, if they are two questions, '
                          f'say so on the training line: "distinct_from": ["{j.qid}"]')
    dev, test, dev_docs, test_docs = split_by_document(judged, sources, params.dev_share, params.seed,
                                                       params.min_dev, params.min_test)
    return CaseInputs(corpus, dev, test, [it for it in train if it.kind != "unanswerable"], sources, train_sources,
                      dev_docs, test_docs, left_out, {"corpus_dir": folder, "questions_file": qfile, "train_questions_file": tfile})


def answer_sources(items: list, corpus, path: str) -> dict[str, str]:
    """{question id: its source document}: the doc_id it names, else the first document whose text
    contains one of its answers. A question whose answers appear in none of its candidate documents
    is refused (the first five named)."""
    by_id = {s.doc_id: s for s in corpus.sources}
    out, missing, ambiguous = {}, [], []
    for it in items:
        if it.kind == "unanswerable":
            continue
        candidates = [by_id[d] for d in it.gold_doc_ids] or corpus.sources
        holding = [s.doc_id for s in candidates if metrics.contains(s.text, list(it.answers))]
        if not holding:
            missing.append(it.qid)
        elif len(holding) > 1 and not it.gold_doc_ids:  # a guess could put its fact on both sides of the split
            ambiguous.append(f"{it.qid} ({', '.join(holding[:3])})")
        else:
            out[it.qid] = holding[0]
    if ambiguous:
        raise CorpusError(f"{Path(path).name}: the answers of {len(ambiguous)} question(s) without a doc_id appear in "
                          f"more than one document ({'; '.join(ambiguous[:3])}{' ...' if len(ambiguous) > 3 else ''}): "
                          'name the document that answers each with "doc_id", so the split by document is sure')
    if missing:
        where = "the document its doc_id names" if any(it.gold_doc_ids for it in items) else "any document"
        raise CorpusError(f"{Path(path).name}: the answers of {len(missing)} question(s) appear in no document "
                          f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; checked against {where}): "
                          "give answers as the documents word them, or add the documents that hold them")
    return out


def split_by_document(items: list, sources: dict, dev_share: float, seed: int, min_dev: int,
                      min_test: int) -> tuple[list, list, tuple, tuple]:
    """Development and test questions, whole source documents at a time (so no fact of a test question
    is a development question's): the documents in a seeded order, each to development while it brings
    the development questions closer to dev_share of them (or below min_dev), the rest to test."""
    docs = sorted({sources[it.qid] for it in items})
    random.Random(seed).shuffle(docs)
    target, dev_docs, n_dev = dev_share * len(items), [], 0
    counts = {d: sum(sources[it.qid] == d for it in items) for d in docs}
    for d in docs[:-1]:  # the last document is always a test document
        if n_dev >= min_dev and abs(n_dev + counts[d] - target) >= abs(n_dev - target):
            break
        dev_docs.append(d)
        n_dev += counts[d]
    dev = [it for it in items if sources[it.qid] in dev_docs]
    test = [it for it in items if sources[it.qid] not in dev_docs]
    if len(docs) < 2 or len(dev) < min_dev or len(test) < min_test:
        raise CorpusError(f"too few questions for a split by document: {len(items)} answerable question(s) from "
                          f"{len(docs)} document(s) gave {len(dev)} development and {len(test)} test questions; this "
                          f"chapter needs at least {min_dev} and {min_test} (min_dev, min_test), from two or more "
                          "documents: add questions about more documents")
    return dev, test, tuple(sorted(dev_docs)), tuple(sorted(set(docs) - set(dev_docs)))


# ---------------------------------------------------------------------------------------------
# The time estimate, said before anything trains


@dataclass(frozen=True)
class Estimate:
    """What will train, and about how long it takes here: the training tokens per epoch of each
    fine-tune, the epochs kept within max_train_tokens, and the host's LoRA rate."""

    dsf_per_epoch: int  # tokens of one epoch of every arm of the knowledge fine-tune
    raft_per_epoch: int  # about: RAFT's examples hold chunks that the index makes later
    dsf_epochs: tuple  # the checkpoints that will be trained and scored
    raft_epochs: int
    dropped: str  # what max_train_tokens cut, in words ("" when nothing)
    tokens_per_s: float
    host: str

    @property
    def tokens(self) -> int:
        return self.dsf_per_epoch * max(self.dsf_epochs, default=0) + self.raft_per_epoch * self.raft_epochs

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s

    def sentence(self) -> str:
        took = f"{self.seconds:.0f} s" if self.seconds < 120 else f"{self.seconds / 60:.0f} minutes"
        cut = f" {self.dropped}." if self.dropped else ""
        return (f"Training estimate: about {took} ({self.tokens:,} tokens: the fine-tune's arms {self.dsf_per_epoch:,} an epoch for "
                f"{max(self.dsf_epochs, default=0)} epochs, RAFT about {self.raft_per_epoch:,} for {self.raft_epochs}; "
                f"{self.tokens_per_s:.0f} tokens/s of LoRA on this host: {self.host}); far less on a GPU.{cut}")


def training_plan(dsf_per_epoch: int, raft_per_epoch: int, dsf_epochs: list, raft_epochs: int,
                  budget: int) -> tuple[tuple, int, str]:
    """The epochs that fit `budget` training tokens: all of them when they fit; else, at the share f of
    the budget over what they would take, the fine-tune's checkpoints up to f of its last (its first
    at least) and f of RAFT's epochs (one at least). Deterministic: tokens, not seconds, decide.
    Returns (checkpoints kept, RAFT epochs kept, what was dropped in words)."""
    full = dsf_per_epoch * max(dsf_epochs, default=0) + raft_per_epoch * raft_epochs
    if full <= budget:
        return tuple(dsf_epochs), raft_epochs, ""
    f = budget / full
    kept = tuple(e for e in dsf_epochs if e <= f * max(dsf_epochs)) or tuple(dsf_epochs[:1])
    raft_kept = max(1, math.floor(f * raft_epochs)) if raft_epochs else 0
    left = dsf_per_epoch * max(kept) + raft_per_epoch * raft_kept
    over = f", {left:,} tokens: more than the budget, since the first checkpoint and one RAFT epoch always train" if left > budget else ""
    return kept, raft_kept, (f"max_train_tokens={budget:,} keeps the fine-tune's checkpoints {list(kept)} of {list(dsf_epochs)} "
                             f"and {raft_kept} of RAFT's {raft_epochs} epochs (the whole plan would train {full:,} tokens{over})")


def estimate(params, inputs: CaseInputs) -> Estimate:
    """Training tokens from the training data itself (the tokenizer only), the epochs that fit
    max_train_tokens (training_plan), at the reference LoRA rate scaled by this host's measured speed
    (ragft.host)."""
    from transformers import AutoTokenizer

    settings.refuse_without_cuda(params)  # before the gpu profile's hub tokenizer could go online
    settings.set_online(params.online)  # the gpu profile's hub model: its tokenizer comes from the hub
    tok = AutoTokenizer.from_pretrained(models.model_source(params.model))
    # at the smallest chunk size (the most parts, each with its prompt): an upper bound whatever size is chosen
    parts = document_parts(inputs, tok, min(params.chunk_sizes))
    dsf = sum(len(t.input_ids) for d in arms_of(params, inputs, parts) for t in tokenize(tok, dsf_examples(d), 4096))
    # a RAFT example: the question, the oracle and the distractors at the largest chunk size, the quote and answer
    raft_per_epoch = len(inputs.train) * ((params.n_distractors + 1) * max(params.chunk_sizes) + 80)
    kept, raft_kept, dropped = training_plan(dsf, raft_per_epoch, params.dsf_epochs, params.raft_epochs if inputs.train else 0,
                                             params.max_train_tokens)
    speed = host.measure(params.threads)
    return Estimate(dsf, raft_per_epoch if inputs.train else 0, kept, raft_kept, dropped,
                    host.REFERENCE_LORA_TOKENS_PER_S / speed.factor, speed.describe())


# ---------------------------------------------------------------------------------------------
# Set-up


@dataclass
class Case:
    params: object
    clock: Clock  # the chapter's stage timer (ragft.results.open_chapter)
    folder: Path  # its run folder, resolved once at its start and held
    lm: object
    embed_model: object
    inputs: CaseInputs
    chroma: Path

    def open_store(self, chunk_size: int):
        return rag.ChunkStore(f"case-{chunk_size}", embed_model=self.embed_model, chunk_size=chunk_size,
                              chunk_overlap=self.params.chunk_overlap, path=self.chroma)


def setup(params, inputs: CaseInputs) -> Case:
    """Seeds and threads, the language model and the embedder, and a fresh local Chroma folder."""
    folder, clock, lm, embed_model, _ = start(CHAPTER, params, embedder=True)
    chroma = folder / "chroma" / CHAPTER
    shutil.rmtree(chroma, ignore_errors=True)
    return Case(params, clock, folder, lm, embed_model, inputs, chroma)


# ---------------------------------------------------------------------------------------------
# Retrieval


@dataclass
class Index:
    retrievers: dict  # chunk size -> Retriever (over its ChunkStore)
    chunks: dict  # chunk size -> every chunk (rag.Hit), in id order


def index(case: Case) -> Index:
    retrievers, chunks = {}, {}
    with case.clock.stage("index"):
        for size in case.params.chunk_sizes:
            store = case.open_store(size)
            store.ingest(case.inputs.corpus.sources, keep={s.path for s in case.inputs.corpus.skipped})
            retrievers[size], chunks[size] = rag.Retriever(store, case.embed_model), store.all_chunks()
    return Index(retrievers, chunks)


def hits(items: list, rankings: list, sources: dict) -> dict[str, int]:
    """{question id: 1 when a retrieved chunk comes from the question's source document}."""
    return {it.qid: int(any(h.doc_id == sources[it.qid] for h in r)) for it, r in zip(items, rankings)}


@dataclass
class RetrievalChoice:
    chunk_size: int
    top_k: int
    dev: pd.DataFrame  # per chunk size and top-k: development hit rate and RAG answer accuracy
    test_ranked: list  # the test questions' chunks at the choice, retrieved once for every reading arm
    test_hit: float  # the test questions' hit rate at the choice
    measured: Measured = field(default_factory=Measured)  # the test questions' retrieval hits


def choose_retrieval(case: Case, idx: Index) -> RetrievalChoice:
    """On the development questions only: each chunk size and top-k's hit rate and the base model's
    RAG answers; the best answer accuracy wins (ties: fewer tokens, so the smaller k, then size)."""
    p, inputs = case.params, case.inputs
    rows = []
    with case.clock.stage("choose_retrieval"):
        for size in p.chunk_sizes:
            ranked = idx.retrievers[size].search([it.question for it in inputs.dev], max(p.top_ks), p.retrieval)
            for k in p.top_ks:
                top = [r[:k] for r in ranked]
                asked = ask(case.lm, inputs.dev, top, "rag", p, f"development, {size} tokens, top-{k}")
                rows.append({"chunk_size": size, "top_k": k, "hit_rate": mean(hits(inputs.dev, top, inputs.sources)),
                             "contains": asked.scores["contains"], "prompt_tokens": asked.gen.mean_prompt_tokens})
    dev = pd.DataFrame(rows)
    best = dev.sort_values(["contains", "top_k", "chunk_size"], ascending=[False, True, True]).iloc[0]
    size, k = int(best.chunk_size), int(best.top_k)
    test_ranked = retrieve(case, idx, size, k, inputs.test)
    test_hits = hits(inputs.test, test_ranked, inputs.sources)
    measured = Measured()
    measured.record("case: retrieval hit", test_hits)
    return RetrievalChoice(size, k, dev.set_index(["chunk_size", "top_k"]), test_ranked, mean(test_hits), measured)


def retrieve(case: Case, idx: Index, size: int, k: int, items: list) -> list:
    return idx.retrievers[size].search([it.question for it in items], k, case.params.retrieval)


# ---------------------------------------------------------------------------------------------
# Asking an arm


@dataclass
class Asked:
    arm: str
    items: list
    gen: object  # Generation
    texts: list  # the answers scored (RAFT: after its answer marker)
    scores: dict  # ragft.metrics.score_answers
    measured: Measured = field(default_factory=Measured)  # its per-question outcomes, under the arm's condition name (`arm`)


def ask(lm, items: list, rankings: list | None, style: str, params, desc: str) -> Asked:
    """One model's answers in one of the book's prompt styles (closed, rag, raft), scored."""
    docs = None if style == "closed" else [[h.text for h in r] for r in rankings]
    budget = params.cot_max_new_tokens if style == "raft" else params.max_new_tokens
    gen = raft.ask(lm, [it.question for it in items], docs, style, budget, params.batch_size, desc=desc)
    texts = raft.answers_of(gen.texts) if style == "raft" else gen.texts
    return Asked(desc, items, gen, texts, metrics.score_answers(texts, items))


def arm(case: Case, lm, name: str, rankings: list | None) -> Asked:
    """An arm on the test questions, with its outcomes under its condition name."""
    with case.clock.stage(KEYS[name]):
        asked = ask(lm, case.inputs.test, rankings, STYLE[name], case.params, LABELS[name])
    asked.arm = name
    asked.measured = answer_outcomes(name, case.inputs.test, asked.gen, asked.texts)
    return asked


def base_arms(case: Case, choice: RetrievalChoice) -> list[Asked]:
    return [arm(case, case.lm, BASE, None), arm(case, case.lm, RAG, choice.test_ranked)]


def mean(values) -> float:
    values = list(values.values()) if isinstance(values, dict) else list(values)
    return sum(values) / len(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# The knowledge fine-tune


def document_parts(inputs: CaseInputs, tokenizer, size: int) -> list[tuple[str, str]]:
    """The documents' text in parts of about `size` tokens, as (title and part number, text)."""
    out = []
    for s in inputs.corpus.sources:
        ids = tokenizer(s.text, add_special_tokens=False)["input_ids"]
        parts = [tokenizer.decode(ids[i:i + size]).strip() for i in range(0, len(ids), size)]
        out += [(f"{s.title}, part {i + 1}", t) for i, t in enumerate(parts) if t]
    return out


# The knowledge fine-tune's arms, each trained on its own data alone (issue 50): what every reader has
# (the documents), what a rule can write from them, and the reader's own training questions where given
DSF_ARMS = {"documents": "your documents as they are", "generated": "questions a rule writes from your documents",
            "questions": "your training questions", "both": "your documents and your training questions together"}
RECITED_WORDS = 8  # the documents arm has learnt a part when it recites the part's first 8 words from its title


def recited_words(params) -> int:
    """The opening words a recitation must reproduce: RECITED_WORDS, or fewer where max_new_tokens could
    not hold them (about two tokens a word)."""
    return max(1, min(RECITED_WORDS, params.max_new_tokens // 2))


@dataclass(frozen=True)
class ArmData:
    """One arm's training data (question, the text it learns to answer) and what its fitness asks:
    the same questions, or for the documents each part's opening words (it has no question of its own:
    `recited_words`)."""

    arm: str
    training: list  # rag.QAItem: the prompt and, as its first answer, the training target
    own: list  # rag.QAItem: its fitness probe, answered closed book


def arm_data(inputs: CaseInputs, parts: list[tuple[str, str]], arm: str, words: int = RECITED_WORDS) -> ArmData:
    """An arm's data (DSF_ARMS): the documents' parts recited from their titles; the cloze questions
    ragft.corpus.injection's rule writes from the documents (its capitalised non-values: the corpus's
    own, ragft.corpus.injection.not_names_of); the reader's training questions (none: no data); or
    the training questions and the parts together, its fitness asked on both."""
    if arm == "documents":
        training = [rag.QAItem(f"part-{i}", f"Recite {where}.", (text,)) for i, (where, text) in enumerate(parts)]
        own = [rag.QAItem(it.qid, it.question, (" ".join(it.answers[0].split()[:words]),)) for it in training]
        return ArmData(arm, training, own)
    if arm == "generated":
        not_names = injection.not_names_of([s.text for s in inputs.corpus.sources])
        cloze = [q for s in inputs.corpus.sources for q in injection.cloze_questions(s.title, s.text, not_names=not_names)]
        training = [rag.QAItem(f"cloze-{i}", q, (v,)) for i, (q, v) in enumerate(cloze)]
        return ArmData(arm, training, training)
    if arm == "questions":
        return ArmData(arm, list(inputs.train), list(inputs.train))
    if arm == "both":  # what a reader with training questions would train on: all of it, nothing without them
        docs, questions = arm_data(inputs, parts, "documents", words), arm_data(inputs, parts, "questions")
        return ArmData(arm, questions.training + docs.training if inputs.train else [], questions.own + docs.own)
    raise ValueError(f"arm={arm!r}: use one of {list(DSF_ARMS)}")


def dsf_examples(data: ArmData) -> list:
    """An arm's training examples: each prompt (chapter 3's closed-book prompt) with its first answer."""
    return [example(dsf_messages(it.question), it.answers[0]) for it in data.training]


def arms_of(params, inputs: CaseInputs, parts: list[tuple[str, str]]) -> list[ArmData]:
    """The arms dsf_arms names that have data, in DSF_ARMS's order (the tie order of the choice)."""
    words = recited_words(params)
    return [d for d in (arm_data(inputs, parts, a, words) for a in DSF_ARMS if a in params.dsf_arms) if d.training]


def chosen_checkpoint(rows: list[dict]) -> int:
    """The row (arm and epoch, in training order) that stands for the fine-tune: the most development
    questions answered, ties to fewer training tokens, then to the earlier row (the earlier arm in
    DSF_ARMS's order)."""
    return max(range(len(rows)), key=lambda i: (rows[i]["dev_acc"], -rows[i]["train_tokens"], -i))


@dataclass
class FineTune:
    checkpoints: pd.DataFrame  # per arm and epoch: its own training data, development accuracy, seconds, tokens
    arm: str  # the arm that stands for "DSF" (DSF_ARMS), chosen on the development questions
    chosen_epoch: int
    trained_acc: float  # the chosen arm's own training data at the chosen checkpoint: the fitness measure
    n_own: int  # the questions (or parts) behind trained_acc
    fit: bool
    train_tokens: int  # up to the chosen checkpoint
    train_s: float
    lm: object  # the chosen checkpoint, merged, ready to answer
    asked: list  # DSF and DSF + RAG on the test questions
    skipped: str = ""  # why there is no fine-tune, when there is none


def fine_tune(case: Case, choice: RetrievalChoice, epochs: tuple) -> FineTune:
    """Each arm of dsf_arms (ArmData) a LoRA run of its own at a constant rate after warm-up, snapshots
    after each of `epochs` (the estimate's, within max_train_tokens) scored closed book on its own
    training data and on the development questions. The most development questions answered stands,
    ties to fewer training tokens, then to the earlier arm (the plan's choices); it is fit when its
    own training data is learnt as the plan's rule asks. Then it answers the test questions closed
    book and with RAG."""
    p, inputs, clock = case.params, case.inputs, case.clock
    data = arms_of(p, inputs, document_parts(inputs, case.lm.tokenizer, choice.chunk_size))
    if not data:
        return FineTune(pd.DataFrame(), "", 0, float("nan"), 0, False, 0, 0.0, None, [],
                        skipped=f"dsf_arms {p.dsf_arms} has no data here: the questions and both arms need training questions (train_questions_file)")
    cfg = tasks.lora_config(p, max(epochs), schedule="constant", warmup=p.warmup_steps, max_len=1024)
    rows, folders = [], []
    for d in data:
        with clock.stage("dsf_train"):
            result = units.train(p.model, dsf_examples(d), cfg, label=f"case-dsf-{d.arm}", snapshots=tuple(epochs))
        with clock.stage("dsf_checkpoints"):
            for epoch in epochs:
                here = result.at(epoch)
                own = ask(here, d.own, None, "closed", p, f"DSF ({d.arm}) epoch {epoch}, its own training data")
                dev = ask(here, inputs.dev, None, "closed", p, f"DSF ({d.arm}) epoch {epoch}, development")
                cost = result.metrics["snapshots"][str(epoch)]
                rows.append({"arm": d.arm, "epoch": epoch, "trained_acc": own.scores["contains"], "n_own": len(d.own),
                             "dev_acc": dev.scores["contains"], "train_tokens": cost["train_tokens"], "seconds": cost["train_s"]})
                folders.append(result.ref(epoch))
                del here
        del result
        release_memory()
    at = chosen_checkpoint(rows)
    lm = units.model(folders[at])
    table = pd.DataFrame([{**r, "chosen": i == at} for i, r in enumerate(rows)]).set_index(["arm", "epoch"])
    row = rows[at]
    asked = [arm(case, lm, DSF, None), arm(case, lm, DSF_RAG, choice.test_ranked)]
    return FineTune(table, row["arm"], int(row["epoch"]), float(row["trained_acc"]), int(row["n_own"]),
                    row["trained_acc"] >= the_plan().fitness["case_dsf"]["min"], int(row["train_tokens"]),
                    float(row["seconds"]), lm, asked)


# ---------------------------------------------------------------------------------------------
# RAFT


@dataclass
class Raft:
    n_examples: int
    trained_acc: float  # its own training examples: the fitness measure
    fit: bool
    train_tokens: int
    train_s: float
    asked: list  # RAFT + RAG on the test questions
    skipped: str = ""


def raft_sources(inputs: CaseInputs, chunks: list) -> list:
    """A RAFT source per training question: the first chunk of its source document that holds an
    answer is the oracle, its sentence closest to the answer the quote (a question whose answer a
    chunk boundary cuts is left out)."""
    out = []
    for it in inputs.train:
        own = [c.text for c in chunks if c.doc_id == inputs.train_sources[it.qid] and metrics.contains(c.text, list(it.answers))]
        if own:
            out.append(raft.RaftSource(it.qid, it.question, it.answers[0], (own[0],),
                                       (raft.closest_sentence(own[0], it.answers[0]),)))
    return out


def train_raft(case: Case, idx: Index, choice: RetrievalChoice, epochs: int) -> Raft:
    """RAFT (chapter 4's recipe) on the training questions: the oracle chunk kept in p_oracle of the
    examples, n_distractors retrieved chunks beside it (hard negatives, topped up at random), the
    quote then the answer as the target; LoRA at a constant rate for `epochs` (the estimate's). Its fitness: its answers to its own
    training examples. Then RAFT + RAG on the test questions with the chosen chunks."""
    p, inputs, clock = case.params, case.inputs, case.clock
    if not inputs.train:
        return Raft(0, float("nan"), False, 0, 0.0, [], skipped="it needs training questions (train_questions_file)")
    if not epochs:
        return Raft(0, float("nan"), False, 0, 0.0, [], skipped="raft_epochs = 0: no RAFT arm in this run (the cpu "
                    "profile's default: on the sample case one epoch did not reach RAFT's fitness; set raft_epochs to train it)")
    chunks = idx.chunks[choice.chunk_size]
    sources = raft_sources(inputs, chunks)
    if not sources:
        return Raft(0, float("nan"), False, 0, 0.0, [], skipped=f"no training answer lies whole in one chunk of "
                    f"{choice.chunk_size} tokens, so no example has an oracle")
    found = retrieve(case, idx, choice.chunk_size, p.n_distractors + 1, [it for it in inputs.train
                                                                        if it.qid in {s.qid for s in sources}])
    negatives = {s.qid: [h.text for h in r] for s, r in zip(sources, found)}
    try:
        records = raft.build_raft(sources, [c.text for c in chunks], p.n_distractors, p.p_oracle, p.seed,
                                  hard_negatives=negatives)
    except TrainingDataError as e:  # a small corpus: too few chunks without the answer to be distractors
        return Raft(0, float("nan"), False, 0, 0.0, [], skipped=f"{e} (use fewer n_distractors or a smaller chunk size)")
    cfg = tasks.lora_config(p, epochs, schedule="constant", warmup=p.warmup_steps, max_len=1024)
    with clock.stage("raft_train"):
        result = units.train(p.model, [r.to_example() for r in records], cfg, label="case-raft")
    by_id = {it.qid: it for it in inputs.train}
    items = [by_id[r.qid] for r in records]
    with clock.stage("raft_fitness"):
        own = ask(result.lm, items, [[rag.Hit("", "", "", d, 0.0) for d in r.documents] for r in records], "raft", p,
                  "RAFT, its training examples")
    trained_acc = own.scores["contains"]
    asked = [arm(case, result.lm, RAFT_RAG, choice.test_ranked)]
    return Raft(len(records), trained_acc, trained_acc >= the_plan().fitness["case_raft"]["min"],
                int(result.metrics["train_tokens"]), float(result.metrics["train_s"]), asked)


# ---------------------------------------------------------------------------------------------
# Judged: scores, comparisons


@dataclass
class Judged:
    scores: pd.DataFrame  # per arm that ran: contains with its 95 % interval, EM, F1, tokens
    comparisons: list  # the plan's case comparisons whose arms ran, Holm-adjusted among themselves
    skipped: dict  # arm -> what it would need
    measured: Measured = field(default_factory=Measured)  # every arm's outcomes, the scores and fitness metrics


def judged(case: Case, asked: list[Asked], ft: FineTune, rf: Raft) -> Judged:
    """Each arm's scores on the test questions, and every case comparison the plan declares judged on
    their outcomes (ragft.results.state_comparisons), then Holm-adjusted among themselves (the CASE
    family), an arm that missed its fitness named."""
    measured, n = Measured.merged(*(a.measured for a in asked)), len(case.inputs.test)
    if not ft.skipped:  # fitness: the chosen arm's own training data
        measured.metric("case_dsf_trained_acc", ft.trained_acc, "rate", n=ft.n_own)
    if not rf.skipped:
        measured.metric("case_raft_trained_acc", rf.trained_acc, "rate", n=rf.n_examples)
    rows = []
    for a in asked:
        s = a.scores
        low, high = wilson_interval(s["contains"] * n, n)
        measured.metric(f"case_{KEYS[a.arm]}_contains", s["contains"], "rate", n=n)
        measured.metric(f"case_{KEYS[a.arm]}_f1", s["f1"], "mean", n=n)
        rows.append({"arm": LABELS[a.arm], "contains": s["contains"], "95 % interval": f"[{low:.2f}, {high:.2f}]",
                     "em": s["em"], "f1": s["f1"], "prompt tokens": a.gen.mean_prompt_tokens,
                     "completion tokens": a.gen.mean_completion_tokens})
    skipped = {DSF: ft.skipped, DSF_RAG: ft.skipped, RAFT_RAG: rf.skipped}
    plan = the_plan()
    labels = {cid: (LABELS[plan.get(cid).a], LABELS[plan.get(cid).b]) for cid in COMPARISONS}
    unmeasured = {cid: skipped.get(plan.get(cid).a) or skipped.get(plan.get(cid).b) for cid in COMPARISONS}
    stated = state_comparisons(CHAPTER, measured.outcomes, labels, None, {c: why for c, why in unmeasured.items() if why},
                               profile=case.params.profile)
    comparisons = adjust([c.as_dict() for c in judged_of(stated)], metrics={CHAPTER: measured.metrics}, family=CASE)
    return Judged(pd.DataFrame(rows).set_index("arm"), comparisons, {LABELS[k]: v for k, v in skipped.items() if v}, measured)


def comparisons_table(j: Judged) -> pd.DataFrame:
    """The case's comparisons: difference with its interval, raw and Holm-adjusted p, the verdict on
    the adjusted p, and for an undecided one the questions that would detect the smallest effect."""
    rows = []
    for c in j.comparisons:
        a, b = LABELS[c["a"]], LABELS[c["b"]]
        rows.append({"comparison": f"{a} against {b}", "difference (points)": 100 * c["diff"],
                     "95 % CI": f"[{100 * c['ci_low']:+.0f}, {100 * c['ci_high']:+.0f}]", "p": c["p"],
                     "Holm-adjusted p": c.get("p_adjusted"), "verdict": reading(c),
                     "questions that would decide": c["n_needed"] if c["verdict"] == NOT_DECIDED else "–"})
    return pd.DataFrame(rows).set_index("comparison")


def reading(c: dict) -> str:
    """A case comparison's verdict in the reader's words: which arm is better, or why it is not said."""
    if c["verdict"] == SUPPORTED:
        return f"{LABELS[c['a']]} better"
    if c["verdict"] == DIRECTION_ONLY:  # the interval reaches below the smallest effect of interest
        return f"{LABELS[c['a']]} better, by an amount this n does not show to matter"
    if c["verdict"] == "contradicted":
        return f"{LABELS[c['b']]} better"
    if c["verdict"] == NOT_DECIDED:
        return f"not decided at n = {c['n']}"
    return c["verdict"]


# ---------------------------------------------------------------------------------------------
# Priced: chapter 6's cost model at the reader's volumes


@dataclass
class Priced:
    table: pd.DataFrame  # per arm: dollars a month by part, and in all
    workload: dict  # what every arm shares: volumes, price rows, index
    measured: Measured = field(default_factory=Measured)  # each arm's monthly dollars


def priced(case: Case, asked: list[Asked], ft: FineTune, rf: Raft, idx: Index, choice: RetrievalChoice) -> Priced:
    """Each arm's monthly dollars (ragft.costs): its measured prompt and completion tokens per query at
    the serving row (a fine-tune at its fine-tuned row); retrieval arms pay a query embedding, a read
    and re-indexing the corpus per update; trained arms their training run (this run's training
    tokens at the training row), redone at every update for the closed-book fine-tune, whose facts
    are in its weights, else amortised over training_life_months."""
    p, measured = case.params, Measured()
    chunks = idx.chunks[choice.chunk_size]
    corpus_tokens = sum(len(case.lm.tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks)
    dims = rag.store.bare_encoder(case.embed_model).get_sentence_embedding_dimension()
    shared = dict(queries_per_month=p.queries_per_month, updates_per_month=p.updates_per_month, training=p.training_price,
                  training_life_months=p.training_life_months, reindex_tokens=float(corpus_tokens),
                  writes_per_update=float(len(chunks)), index_gb=len(chunks) * dims * 4 / 1e9)
    trained_tokens = {DSF: ft.train_tokens, DSF_RAG: ft.train_tokens, RAFT_RAG: rf.train_tokens}
    rows = []
    for a in asked:
        tuned = a.arm in trained_tokens
        approach = costs.Approach(LABELS[a.arm], a.gen.mean_prompt_tokens, a.gen.mean_completion_tokens,
                                  costs.fine_tuned_row(p.serving_price) if tuned else p.serving_price,
                                  retrieval=STYLE[a.arm] != "closed", trained=tuned, retrain_on_update=a.arm == DSF)
        w = costs.Workload(**shared, train_tokens=float(trained_tokens.get(a.arm, 0)))
        parts = costs.monthly_parts(approach, w)
        # derived from measured token counts: a reply a token longer moves it (chapter 6's tolerance)
        total = measured.metric(f"case_{KEYS[a.arm]}_monthly_usd", sum(parts.values()), "derived", tol=0.1 * sum(parts.values()))
        rows.append({"arm": LABELS[a.arm], **{f"{k} ($)": v for k, v in parts.items()}, "per month ($)": total})
    return Priced(pd.DataFrame(rows).set_index("arm"), shared, measured)


# ---------------------------------------------------------------------------------------------
# The closing table


def closing(j: Judged, pr: Priced, ft: FineTune, rf: Raft) -> pd.DataFrame:
    """Per arm: its accuracy with the interval, the cost a month, whether a trained arm reached its
    fitness, and how it stands against base + RAG (the plan's comparison, adjusted)."""
    against = {c["a"] if c["b"] == RAG else c["b"]: c for c in j.comparisons if RAG in (c["a"], c["b"])}
    fitness = {LABELS[DSF]: ft.fit, LABELS[DSF_RAG]: ft.fit, LABELS[RAFT_RAG]: rf.fit}
    rows = []
    for name in ARMS:
        label = LABELS[name]
        if label in j.skipped:
            rows.append({"arm": label, "answers right": "–", "per month ($)": "–", "fit": "–",
                         "against base + RAG": f"skipped: {j.skipped[label]}"})
            continue
        c = against.get(name)
        rows.append({"arm": label, "answers right": f"{j.scores.loc[label, 'contains']:.0%} {j.scores.loc[label, '95 % interval']}",
                     "per month ($)": f"{pr.table.loc[label, 'per month ($)']:,.2f}",
                     "fit": {True: "yes", False: "no"}.get(fitness.get(label), "–"),
                     "against base + RAG": "–" if name == RAG else (reading(c) if c else "not compared")})
    return pd.DataFrame(rows).set_index("arm")


def headline(j: Judged) -> dict[str, str]:
    """The words the prose glues: the arm that answers most test questions, and how sure the run is
    of its lead: each of the plan's comparisons that involve it, decided or not (with the questions
    that would decide), or that no comparison decides it."""
    best = j.scores.contains.idxmax()
    name = next(k for k, v in LABELS.items() if v == best)
    parts = []
    for c in j.comparisons:
        if name not in (c["a"], c["b"]):
            continue
        other = LABELS[c["b"] if c["a"] == name else c["a"]]
        said = reading(c)
        if said == f"{best} better":
            parts.append(f"better than {other} after the adjustment")
        elif c["verdict"].startswith("not decided at"):
            parts.append(f"not decided against {other} at n = {c['n']}: about {c['n_needed']:,} test questions would decide")
        else:
            parts.append(f"against {other}: {said}")
    return {"case_best_arm": best, "case_best_sure": "; ".join(parts) or "no declared comparison involves it"}


def finish(case: Case, inputs: CaseInputs, est: Estimate, choice: RetrievalChoice, ft: FineTune, rf: Raft,
           j: Judged, pr: Priced) -> Path:
    """The chapter's one recording step: what its steps returned (the retrieval hits, the arms'
    outcomes and scores, the prices) with the set-up's counts and choices, the judged comparisons, the
    tables, every metric glued, and the results file written."""
    kept, records = Measured(), (lambda t: t.reset_index().to_dict("records"))  # noqa: E731
    kept.metric("case_n_docs", len(inputs.corpus.sources), "exact")
    kept.metric("case_n_dev", len(inputs.dev), "exact")
    kept.metric("case_n_test", len(inputs.test), "exact")
    kept.metric("case_n_train", len(inputs.train), "exact")
    kept.metric("case_chunk_size", choice.chunk_size, "choice")
    kept.metric("case_top_k", choice.top_k, "choice")
    kept.metric("case_retrieval_hit", choice.test_hit, "rate", n=len(inputs.test))
    kept.metric("case_estimate_s", est.seconds, "machine")
    if not ft.skipped:
        kept.metric("case_dsf_chosen_epoch", ft.chosen_epoch, "choice")
        kept.metric("case_dsf_train_s", ft.train_s, "machine")
    if not rf.skipped:
        kept.metric("case_raft_train_s", rf.train_s, "machine")
        kept.metric("case_raft_examples", rf.n_examples, "exact")
    kept.tables.update(split=records(inputs.split_table()), retrieval_dev=records(choice.dev),
                      dsf_checkpoints=records(ft.checkpoints) if not ft.skipped else [],
                      scores=records(j.scores), costs=records(pr.table), cost_workload=pr.workload,
                      skipped=j.skipped, files=inputs.files)
    measured = Measured.merged(choice.measured, j.measured, pr.measured, kept)
    glue_metrics(measured.metrics)
    plan = the_plan()
    words = {**headline(j), "case_queries_per_month": f"{case.params.queries_per_month:,.0f}",
             "case_updates_per_month": f"{case.params.updates_per_month:g}",
             # the plan's rules, as the prose cites them (glued, never typed)
             "case_dsf_fitness_min": f"{plan.fitness['case_dsf']['min']:.0%}",
             "case_dsf_arm": DSF_ARMS[ft.arm] if not ft.skipped else "none: " + ft.skipped,
             "case_dsf_arms": ", ".join(DSF_ARMS[a] for a in dict.fromkeys(ft.checkpoints.index.get_level_values("arm")))
             if not ft.skipped else "none",
             "case_recited_words": str(recited_words(case.params)),
             "case_raft_fitness_min": f"{plan.fitness['case_raft']['min']:.0%}",
             "case_raft_trained": f"it answers {rf.trained_acc:.0%}" if not rf.skipped else "it was not trained in this run",
             "case_sesoi": f"{100 * plan.get(COMPARISONS[0]).sesoi:.0f}"}
    for key, value in words.items():
        glue(key, value)
    return ChapterRun(CHAPTER, case.params, case.folder, case.clock).save(measured, j.comparisons, lm=case.lm)
