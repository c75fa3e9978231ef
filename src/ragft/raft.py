"""RAFT training data (Zhang et al. 2024): question + oracle + distractor documents -> an answer that
quotes the oracle and ends with a final-answer marker.

A `RaftSource` is one question with its evidence: the oracle documents (the ones that hold the
answer) and the quotes (sentences of an oracle that state it). `build_raft` turns sources into
`RaftRecord`s: k distractors each (random from a pool, as the reference code does, or hard
negatives a retriever ranked high), the oracle kept with probability P and replaced by one more
distractor otherwise, documents shuffled. The target is a short chain of thought that quotes the
evidence between ##begin_quote## and ##end_quote## and ends with `<ANSWER>: ...`; the no-CoT
variant's target is the answer alone.

Where the gold sentence is known (the knowledge base, HotpotQA's supporting facts) the targets need
no teacher model. For corpora without one, `teacher_quotes` asks any model to copy the supporting
sentence and keeps it only if it really is in the oracle (else the sentence of the oracle closest
to the answer, by word overlap).

JSONL, one record per line, so a reader can train elsewhere:
`{"qid", "question", "documents": [str], "oracle_positions": [int], "quotes": [str], "answer",
"cot": bool, "target"}`. `RaftRecord.to_example()` gives the chat form the training layer takes.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .corpus.benchmarks import BenchmarkItem, Passage
from .costs import cost_per_1k_queries
from .generation import generate
from .metrics import f1, final_answer, normalize, score_answers, strip_citations
from .prompts import ANSWER_MARKER, BEGIN_QUOTE, END_QUOTE, NOCOT_SYSTEM, RAFT_SYSTEM, TEACHER_SYSTEM, build_messages
from .rag.answer import cited_messages
from .scoring import rank_after_generating, rank_candidates
from .text import flat, sentences
from .train import tasks, units
from .train.data import SFTExample, TrainingDataError, example, read_jsonl, write_jsonl
from .train.tasks import dsf_messages

_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)


@dataclass(frozen=True)
class RaftSource:
    qid: str
    question: str
    answer: str
    oracles: tuple[str, ...]  # documents that hold the answer (HotpotQA: two)
    quotes: tuple[str, ...] = ()  # sentences of the oracles that state it (empty: ask a teacher)


@dataclass
class RaftRecord:
    qid: str
    question: str
    documents: list[str]
    oracle_positions: list[int]  # where the oracles sit in `documents` (empty: left out, 1 - P of records)
    quotes: list[str]
    answer: str
    cot: bool = True
    target: str = field(default="")

    def __post_init__(self):
        if not self.target:
            self.target = cot_answer(self.quotes, self.answer) if self.cot else self.answer

    def messages(self) -> list[dict]:
        return raft_messages(self.question, self.documents, self.cot)

    def to_example(self) -> SFTExample:
        return example(self.messages(), self.target)


def raft_messages(question: str, documents: list[str], cot: bool = True) -> list[dict]:
    """The prompt a RAFT model is trained on and asked with: the documents, then the question."""
    return build_messages(question, system=RAFT_SYSTEM if cot else NOCOT_SYSTEM, passages=documents)


def cot_answer(quotes: list[str] | tuple[str, ...], answer: str) -> str:
    """The chain-of-thought target: the evidence quoted, then the answer after the marker."""
    quoted = " ".join(f"{BEGIN_QUOTE}{q}{END_QUOTE}" for q in quotes)
    return f"{quoted}\n{ANSWER_MARKER} {answer}"  # short on purpose: every target token is trained and decoded


def build_raft(sources: list[RaftSource], distractor_pool: list[str], n_distractors: int, p_oracle: float,
               seed: int, cot: bool = True, hard_negatives: dict[str, list[str]] | None = None) -> list[RaftRecord]:
    """RAFT records: per source, the oracles (with probability `p_oracle`) and `n_distractors`
    distractors, one more distractor per oracle left out, shuffled.

    Distractors come from `hard_negatives[qid]` in rank order when given (a retriever's top hits, or
    a benchmark's own distractor paragraphs), topped up at random from `distractor_pool`. A candidate
    never counts as a distractor if it is an oracle or holds one of the quotes. A source with too
    few candidates raises TrainingDataError.
    """
    if not 0.0 <= p_oracle <= 1.0:
        raise TrainingDataError(f"p_oracle={p_oracle}: use a share in [0, 1]")
    if n_distractors < 0:
        raise TrainingDataError(f"n_distractors={n_distractors}: use 0 or more")
    rng = random.Random(seed)
    pool = list(dict.fromkeys(distractor_pool))  # unique, order kept: deterministic sampling
    records = []
    for s in sources:
        if not s.oracles or not s.quotes:
            raise TrainingDataError(f"{s.qid}: a RAFT source needs its oracle documents and quotes "
                                    "(use teacher_quotes for a corpus without gold sentences)")
        keep = rng.random() < p_oracle
        need = n_distractors + (0 if keep else len(s.oracles))
        oracles = {flat(o) for o in s.oracles}

        def usable(text: str) -> bool:
            folded = flat(text)
            return folded not in oracles and not any(flat(q) in folded for q in s.quotes)

        chosen = [t for t in dict.fromkeys((hard_negatives or {}).get(s.qid, [])) if usable(t)][:need]
        for t in rng.sample(pool, len(pool)) if len(chosen) < need else []:
            if usable(t) and t not in chosen:
                chosen.append(t)
                if len(chosen) == need:
                    break
        if len(chosen) < need:
            raise TrainingDataError(f"{s.qid}: needs {need} distractors, found {len(chosen)} usable ones")
        docs = [(t, False) for t in chosen] + ([(o, True) for o in s.oracles] if keep else [])
        rng.shuffle(docs)
        records.append(RaftRecord(s.qid, s.question, [t for t, _ in docs], [i for i, (_, o) in enumerate(docs) if o],
                                  list(s.quotes), s.answer, cot))
    return records


# ---------------------------------------------------------------------------------------------
# The book's RAFT recipe (chapter 4 trains it; chapter 5 reads, or retrains, the same reader)


def training_sources(kb, tested: set[str], chunks: list, n_train: int, seed: int) -> tuple[list[RaftSource], list]:
    """RAFT's training questions from the knowledge base: its single facts other than the `tested`
    ones (ids), in the order drawn with seed + 1 (the development questions come from the same order's
    other end), each in a training paraphrase with the chunks that hold its gold sentence whole; the
    first n_train. Returns (the sources, every non-test fact in that order)."""
    others = [q for q in kb.sample("single", len(kb.by_kind("single")), seed + 1) if q.qid not in tested]
    return kb_sources(others, chunks, "train", seed)[:n_train], others


def cloze_sources(kb, chunks: list, n: int, seed: int) -> list[RaftSource]:
    """RAFT's training questions as a reader could write them (draw d2's reader RAFT): the rule's cloze
    questions about every document of the knowledge base (ragft.corpus.injection: each value-like span
    of each sentence blanked), the test documents' included, since a reader has every document; each
    with the chunks that hold its sentence whole and the sentence as its quote; n of them drawn with
    `seed`. Never a gold question."""
    from .corpus import injection

    out = []
    for doc in kb.documents:
        for i, g in enumerate(injection.generated_questions(doc)):
            sentence = g.question[len(doc.title) + 2:-len(" What goes in the blank?")].replace(injection.BLANK, g.answer, 1)
            oracles = tuple(dict.fromkeys(c.text for c in chunks if flat(sentence) in flat(c.text)))
            if oracles:
                out.append(RaftSource(f"cloze:{doc.doc_id}:{i}", g.question, g.answer, oracles, (sentence,)))
    if len(out) < n:
        raise ValueError(f"asked for {n} cloze questions; the knowledge base's documents give {len(out)} whose "
                         "sentence a chunk holds whole: lower n_train or grow the base")
    return random.Random(f"{seed}:cloze").sample(out, n)


def hard_negatives(retriever, sources: list[RaftSource], params) -> dict[str, list[str]] | None:
    """{qid: the retriever's top hits} for the recipe's distractors where chapter 4's parameters ask for
    retrieved ones (`distractors: retrieved`), else None (random chunks)."""
    if params.distractors != "retrieved":
        return None
    hits = retriever.search([s.question for s in sources], max(params.distractor_counts) + 4, "hybrid")
    return {s.qid: [h.text for h in row] for s, row in zip(sources, hits)}


def records(sources: list[RaftSource], chunks: list, params, p_oracle: float | None = None,
            n_distractors: int | None = None, cot: bool = True, hard: dict | None = None) -> list[RaftRecord]:
    """The recipe's training records (build_raft): chapter 4's parameters' P and distractors unless
    given (a variant differs in P, distractors or its target, never in its questions or seed)."""
    return build_raft(sources, [c.text for c in chunks], params.n_distractors if n_distractors is None else n_distractors,
                      params.p_oracle if p_oracle is None else p_oracle, params.seed, cot=cot, hard_negatives=hard)


def train_reader(params, records: list[RaftRecord], label: str, seed: int | None = None):
    """A LoRA fine-tune on RAFT records with chapter 4's parameters (a unit, ragft.train.units: the same
    records train the same adapter once), merged for answering; `seed`: another training seed on the
    same records (the plan's `seeds`)."""
    # batches pad to their own longest example, so a generous max_len costs nothing
    cfg = tasks.lora_config(params, params.epochs, max_len=4096, **({"seed": seed} if seed is not None else {}))
    result = units.train(params.model, [r.to_example() for r in records], cfg, label=label)
    return result.merge()  # it only answers from here on


def save_jsonl(records: list[RaftRecord], path: str | Path) -> Path:
    return write_jsonl([asdict(r) for r in records], path)


def load_jsonl(path: str | Path) -> list[RaftRecord]:
    return read_jsonl(path, lambda row: RaftRecord(**row), "a RAFT record (see ragft.raft)")


# ---------------------------------------------------------------------------------------------
# Reading a RAFT model's answer


def quotes_in(text: str) -> list[str]:
    return [q.strip() for q in _QUOTE.findall(text) if q.strip()]


def copied(text: str) -> str:
    """The text as a quote is compared: white space folded and a word repeated at once kept once
    ("is run run by" reads "is run by"), a slip of copying, not text from elsewhere (the analysis
    plan's `raft` rule since issue 48); case, punctuation and every other word are kept."""
    words = flat(text).split(" ")
    return " ".join(w for i, w in enumerate(words) if i == 0 or w != words[i - 1])


def quote_correct(text: str, oracles: list[str]) -> float:
    """1.0 when the answer quotes at least once and every quote is a span of an oracle document
    (each compared as `copied` reads it)."""
    quotes = quotes_in(text)
    folded = [copied(o) for o in oracles]
    return float(bool(quotes) and all(any(copied(q) in o for o in folded) for q in quotes))


def reached_marker(text: str) -> bool:
    """Whether a quoting reply got as far as the final-answer marker (else the budget cut it short)."""
    return ANSWER_MARKER in text


def reasoning_prefix(text: str) -> str:
    """A quoting reply's reasoning, ending with the final-answer marker: the text before its last
    marker, or the whole reply (cut short by the token budget) with the marker added. Candidate
    answers are scored after it, so a reader that reasons first is scored on its own reasoning."""
    head = text.rsplit(ANSWER_MARKER, 1)[0] if ANSWER_MARKER in text else text
    return f"{head.rstrip()}\n{ANSWER_MARKER}".lstrip()


# ---------------------------------------------------------------------------------------------
# Quotes for corpora without gold sentences


def closest_sentence(document: str, reference: str) -> str:
    """The sentence of `document` with the highest word-overlap F1 with `reference` (an answer or a
    conclusion): a lexical stand-in for a teacher model."""
    candidates = sentences(document)
    if not candidates:
        raise TrainingDataError("an oracle document without text has no sentence to quote")
    return max(candidates, key=lambda s: (f1(s, [reference]), -candidates.index(s)))




def teacher_quotes(lm, sources: list[RaftSource], references: list[str] | None = None, max_new_tokens: int = 64,
                   batch_size: int = 8) -> tuple[list[RaftSource], int]:
    """Fill in missing quotes with a teacher model (any model the registry loads, local or hub).

    The teacher sees each oracle with the question and answer and copies the supporting sentence.
    A copy that is not verbatim in an oracle is replaced by the oracle's sentence closest to the
    reference (the answer, or `references[i]` such as a conclusion). Returns the sources and how
    many quotes fell back to the lexical choice.
    """
    todo = [i for i, s in enumerate(sources) if not s.quotes]
    prompts = [build_messages(f"Question: {sources[i].question}\nAnswer: {sources[i].answer}", system=TEACHER_SYSTEM,
                              passages=list(sources[i].oracles)) for i in todo]
    texts = generate(lm, prompts, max_new_tokens, batch_size, desc="teacher quotes").texts if todo else []
    out, fallbacks = list(sources), 0
    for i, text in zip(todo, texts):
        s = sources[i]
        quote = text.strip().strip('"')
        if not quote or not any(flat(quote) in flat(o) for o in s.oracles):
            reference = references[i] if references else s.answer
            quote = closest_sentence(" ".join(s.oracles), reference)
            fallbacks += 1
        out[i] = RaftSource(s.qid, s.question, s.answer, s.oracles, (quote,))
    return out, fallbacks


# ---------------------------------------------------------------------------------------------
# Sources from the book's corpora


def kb_sources(questions, chunks, paraphrase: str = "train", seed: int = 0) -> list[RaftSource]:
    """Knowledge-base questions with their oracle chunks (those holding a gold sentence).

    paraphrase: "train" takes one training paraphrase per question (drawn with `seed`), "test" the
    held-out one. Questions whose gold sentence no chunk holds whole are left out.
    """
    rng = random.Random(seed)
    out = []
    for q in questions:
        oracles = tuple(dict.fromkeys(c.text for c in chunks if any(g in flat(c.text) for g in q.gold_sentences)))
        if oracles:
            text = rng.choice(q.train_texts) if paraphrase == "train" else q.test_text
            out.append(RaftSource(q.qid, text, q.answer, oracles, tuple(q.gold_sentences)))
    return out


def benchmark_sources(items, max_quotes: int | None = None) -> list[RaftSource]:
    """Benchmark items with gold sentences (HotpotQA's supporting facts) as RAFT sources: the gold
    passages are the oracles and the gold sentences they hold are the quotes. `max_quotes` keeps
    that many: those that name the answer first, then the shortest (a short target fits a short
    decoding budget; every target token is trained and decoded)."""
    out = []
    for it in items:
        oracles = tuple(p.text for p in it.passages if p.pid in it.gold_pids)
        quotes = [g for g in it.gold_sentences if any(flat(g) in flat(o) for o in oracles)]
        if max_quotes is not None:
            answer = normalize(it.answers[0])
            ranked = sorted(quotes, key=lambda g: (answer not in normalize(g), len(g)))[:max_quotes]
            quotes = [g for g in quotes if g in ranked]  # document order kept
        out.append(RaftSource(it.qid, it.question, it.answers[0], oracles, tuple(quotes)))
    return out


def chunk_sources(items, chunks) -> list[RaftSource]:
    """Benchmark items whose documents were indexed in chunks (a chunk's doc_id is one of the item's
    passage ids): the quote is the sentence of the item's chunks closest to its gold sentence
    (PubMedQA: the authors' conclusion, which the abstract's other sections do not contain), and
    the oracle is the chunk that holds it. Items with no chunk are left out."""
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c.text)
    out = []
    for it in items:
        own = [t for p in it.passages for t in by_doc.get(p.pid, [])]
        if own:
            reference = it.gold_sentences[0] if it.gold_sentences else it.answers[0]
            quote, oracle = max(((closest_sentence(t, reference), t) for t in own), key=lambda qt: f1(qt[0], [reference]))
            out.append(RaftSource(it.qid, it.question, it.answers[0], (oracle,), (quote,)))
    return out


def one_document(items) -> list:
    """Benchmark items with their passages joined into one document (a PubMed abstract's sections)."""
    out = []
    for it in items:
        doc = Passage(f"{it.qid}-all", it.passages[0].title if it.passages else it.question,
                      " ".join(p.text for p in it.passages))
        out.append(BenchmarkItem(it.qid, it.question, it.answers, [doc], {doc.pid}, it.split, it.gold_sentences, it.kind))
    return out


def own_distractors(items) -> dict[str, list[str]]:
    """Each benchmark item's non-gold passages, in file order: its natural hard negatives."""
    return {it.qid: [p.text for p in it.passages if p.pid not in it.gold_pids] for it in items}


# ---------------------------------------------------------------------------------------------
# Asking and scoring: the same rows for every reader


def ask(lm, questions: list[str], documents: list[list[str]], style: str, max_new_tokens: int, batch_size: int,
        desc: str = "answering"):
    """Answers from one model for many questions, in one of the book's prompt styles:
    "closed" (no documents, chapter 3's DSF prompt), "rag" (chapter 2's numbered sources with
    citations), "raft" or "raft-nocot" (the RAFT prompt). Returns a Generation."""
    return generate(lm, conversations(questions, documents, style), max_new_tokens, batch_size, desc=desc)


def conversations(questions: list[str], documents: list[list[str]] | None, style: str) -> list[list[dict]]:
    """The prompts of one of the book's styles: "closed" (no documents, chapter 3's DSF prompt),
    "rag" (chapter 2's numbered sources with citations), "raft" or "raft-nocot" (the RAFT prompt)."""
    if style == "closed":
        return [dsf_messages(q) for q in questions]
    if style not in ("rag", "raft", "raft-nocot"):
        raise ValueError(f"style={style!r}: use closed, rag, raft or raft-nocot")
    if documents is None or len(documents) != len(questions):
        raise ValueError(f"style={style!r} reads documents: give one list per question")
    if style == "rag":
        return [cited_messages(q, d) for q, d in zip(questions, documents)]
    return [raft_messages(q, d, cot=style == "raft") for q, d in zip(questions, documents)]


def rank(lm, questions: list[str], documents: list[list[str]] | None, style: str, candidates: list[list[str]],
         gold: list[int], reasoning: list[str] | None = None, desc: str = "scoring"):
    """Candidate answers ranked by log-likelihood as the reply to a style's prompt
    (`ragft.scoring.rank_candidates`). `reasoning`: the reader's own generated replies (a quoting
    reader); each candidate is then scored after that reply's reasoning and the final-answer
    marker (the reasoning's own log-likelihood, the same for every candidate of a question, is left
    out of the scores)."""
    prefixes = None
    if reasoning is not None:
        if len(reasoning) != len(questions):
            raise ValueError(f"{len(reasoning)} replies for {len(questions)} questions: they must pair up")
        # the reasoning is prefilled once with the prompt; each candidate continues it after a space
        prefixes = [reasoning_prefix(t) for t in reasoning]
        candidates = [[f" {c}" for c in cands] for cands in candidates]
    return rank_candidates(lm, conversations(questions, documents, style), candidates, gold, desc=desc,
                           reply_prefixes=prefixes)


def read(lm, questions: list[str], documents: list[list[str]] | None, style: str, candidates: list[list[str]],
         gold: list[int], max_new_tokens: int, batch_size: int, desc: str = "reading"):
    """A reader's candidate ranking in one of the book's prompt styles, as `rank` scores it, and, for
    the quoting style ("raft"), its generated replies: it reasons first, so its candidates are scored
    after its own reasoning, on the generation's own KV cache (`ragft.scoring.rank_after_generating`:
    the prompt is prefilled once, not once to answer and once to score). Returns (the Generation or
    None, the Ranking)."""
    if style != "raft":
        return None, rank(lm, questions, documents, style, candidates, gold, desc=desc)
    return rank_after_generating(lm, conversations(questions, documents, style),
                                 [[f" {c}" for c in cands] for cands in candidates], gold, reasoning_prefix,
                                 max_new_tokens, batch_size, desc)


def answers_of(texts: list[str]) -> list[str]:
    """The answer each reply gives: after the final-answer marker, without citation brackets."""
    return [strip_citations(final_answer(t)) for t in texts]


def score_row(name: str, gen, items: list, oracles: list[list[str]] | None, price_row: str, **extra) -> dict:
    """One row of the chapter's tables: gold contained, EM, F1 (answerable items), refusal accuracy
    (unanswerable items), quote correctness (replies whose quotes are all oracle spans; only for a
    quoting reader, `oracles` given), prompt tokens and cost per 1,000 queries."""
    s = score_answers(answers_of(gen.texts), items)
    row = {"condition": name, "contains": s.get("contains"), "em": s.get("em"), "f1": s.get("f1"),
           "refusal_acc": s.get("refusal_acc")}
    answerable = [i for i, it in enumerate(items) if it.kind != "unanswerable"]
    if oracles is not None and answerable:
        row["quote_correct"] = sum(quote_correct(gen.texts[i], oracles[i]) for i in answerable) / len(answerable)
    row.update(prompt_tokens=gen.mean_prompt_tokens, completion_tokens=gen.mean_completion_tokens,
               cost_per_1k_usd=cost_per_1k_queries(gen.mean_prompt_tokens, gen.mean_completion_tokens, price_row), **extra)
    return row


def predicted_labels(ranking, labels: tuple[str, ...] = ("yes", "no", "maybe")) -> list[str]:
    """Each question's label of highest log-likelihood (a `rank` over `labels`, in that order)."""
    return [labels[max(range(len(s)), key=s.__getitem__)] for s in ranking.scores]


def label_scores(said: list[str], gold: list[str], labels: tuple[str, ...] = ("yes", "no", "maybe")) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted yes / no / maybe labels (PubMedQA's official metrics)."""
    if len(said) != len(gold) or not gold:
        raise ValueError(f"{len(said)} predicted labels for {len(gold)} gold ones: they must pair up (and be some)")
    acc = sum(p == g for p, g in zip(said, gold)) / len(gold)
    f1s = []
    for lab in labels:
        tp = sum(p == lab and g == lab for p, g in zip(said, gold))
        fp = sum(p == lab and g != lab for p, g in zip(said, gold))
        fn = sum(p != lab and g == lab for p, g in zip(said, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"acc": acc, "macro_f1": sum(f1s) / len(f1s)}


# The RAFT paper's Table 1 (LLaMA2-7B; PubMedQA accuracy %, HotpotQA EM-style score), quoted for
# comparison with this chapter's rows (claims F3 and F4 in CLAIMS.md).
PAPER_MODEL_PARAMS = 6.74e9  # LLaMA2-7B
PAPER_TABLE1 = {
    "base, 0-shot": (56.5, 0.54), "base + RAG": (58.8, 0.03), "DSF": (59.7, 6.38), "DSF + RAG": (71.6, 4.41),
    "RAFT + RAG": (73.30, 35.28), "RAFT without CoT + RAG": (68.30, 25.62), "GPT-3.5 + RAG": (71.6, 41.5),
}
