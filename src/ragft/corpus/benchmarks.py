"""Loaders for public QA benchmarks, into one record type.

Files are read from a data folder (a chapter's `data_dir` parameter, else RAGFT_DATA_DIR, else the
repository's own data/benchmarks, whose READMEs give sources, licences, checksums and schemas):

  squad/dev-v1.1.json.gz                       SQuAD v1.1 dev (2,067 paragraphs, 10,570 questions)
  pubmedqa/ori_pqal.json.gz, test_ground_truth.json   PubMedQA PQA-L and its official test split
  hotpotqa/hotpot_dev_distractor_subset.json    HotpotQA dev distractor, first 103 questions
  hotpotqa/hotpot_dev_official_sample100.json.gz    the authors' 100-question sample (another schema)
  nq_open/nq-open-oracle.jsonl.gz               NaturalQuestions-Open with its gold passage

When the files are absent and the run is online, SQuAD, PubMedQA and HotpotQA come from the dataset
hub instead; offline, a missing benchmark raises DataUnavailable with what to set.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings

BENCHMARKS = ("squad", "pubmedqa", "hotpotqa", "nq_open")
_FILES = {
    "squad": ["squad/dev-v1.1.json.gz"],
    "pubmedqa": ["pubmedqa/ori_pqal.json.gz", "pubmedqa/test_ground_truth.json"],
    "hotpotqa": ["hotpotqa/hotpot_dev_distractor_subset.json", "hotpotqa/hotpot_dev_official_sample100.json.gz"],
    "nq_open": ["nq_open/nq-open-oracle.jsonl.gz"],
}
_HUB = {  # dataset hub ids for the online fallback (schemas as published there)
    "squad": ("rajpurkar/squad", None, "validation"),
    "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled", "train"),
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "validation"),
}


class DataUnavailable(FileNotFoundError):
    """A benchmark that is neither in the data folder nor reachable; the message says what to set."""


@dataclass(frozen=True)
class Passage:
    pid: str
    title: str
    text: str


@dataclass
class BenchmarkItem:
    qid: str
    question: str
    answers: list[str]  # acceptable answers; PubMedQA: the label ("yes" | "no" | "maybe")
    passages: list[Passage]  # the passages that come with the question (gold first is NOT implied)
    gold_pids: set[str]  # which of them (or of the corpus) hold the answer
    split: str = "test"
    gold_sentences: list[str] = field(default_factory=list)
    kind: str = "single"  # so metrics.score_answers treats every item as answerable


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _files(name: str, data_dir: str | None) -> list[Path] | None:
    folder = settings.data_dir(data_dir)
    if folder is None:
        return None
    paths = [folder / f for f in _FILES[name]]
    return paths if paths[0].exists() else None


def _missing(name: str, data_dir: str | None) -> DataUnavailable:
    folder = settings.data_dir(data_dir)
    where = f"{folder} has no {_FILES[name][0]}" if folder else "no data folder is set"
    hub = " or run online (RAGFT_ONLINE=1) to fetch it from the dataset hub" if name in _HUB else ""
    return DataUnavailable(f"benchmark {name!r} is not available: {where}. Set the chapter's data_dir "
                           f"parameter or RAGFT_DATA_DIR to a folder holding {', '.join(_FILES[name])} "
                           f"(the repository carries them in data/benchmarks){hub}.")


def available(data_dir: str | None = None) -> dict[str, bool]:
    return {name: _files(name, data_dir) is not None for name in BENCHMARKS}


def _hub(name: str, data_dir: str | None):
    if settings.offline() or name not in _HUB:
        raise _missing(name, data_dir)
    try:
        from datasets import load_dataset
    except ImportError as e:  # not installed on Colab (ragft.colab): the clone carries the benchmark files
        raise DataUnavailable(f"{_missing(name, data_dir)} Fetching it from the dataset hub needs the `datasets` "
                              "package: pip install datasets") from e

    repo, config, split = _HUB[name]
    return load_dataset(repo, config, split=split)


# ---------------------------------------------------------------------------------------------


def _squad_rows(data_dir: str | None) -> list[tuple]:
    """SQuAD v1.1 dev, one row per question: (title, context, id, question, answer texts, answer
    starts), from the data folder's file, else (online) the dataset hub, in the source's order."""
    paths = _files("squad", data_dir)
    if paths:
        with _open_text(paths[0]) as f:
            data = json.load(f)["data"]
        return [(a["title"], p["context"], qa["id"], qa["question"], [x["text"] for x in qa["answers"]],
                 [x["answer_start"] for x in qa["answers"]]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return [(r["title"], r["context"], r["id"], r["question"], list(r["answers"]["text"]),
             list(r["answers"]["answer_start"])) for r in _hub("squad", data_dir)]


def load_squad(data_dir: str | None = None) -> tuple[list[BenchmarkItem], list[Passage]]:
    """SQuAD v1.1 dev: (questions, paragraph corpus). Each question's gold is its own paragraph."""
    corpus: dict[str, Passage] = {}
    items = []
    for title, context, qid, question, answers, _ in _squad_rows(data_dir):
        if context not in corpus:
            corpus[context] = Passage(f"squad-{len(corpus)}", title.replace("_", " "), context)
        passage = corpus[context]
        items.append(BenchmarkItem(qid, question, answers, [passage], {passage.pid}))
    return items, list(corpus.values())


@dataclass(frozen=True)
class SpanQuestion:
    qid: str
    question: str
    answers: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # each answer's [start, end) in its article's text


@dataclass(frozen=True)
class Article:
    """One SQuAD article whole: its paragraphs joined by blank lines, and its questions with the
    character spans of their answers in that text (so relevance is exact at any chunk size)."""

    aid: str
    title: str
    text: str
    questions: tuple[SpanQuestion, ...]


PARAGRAPH_SEP = "\n\n"


def load_squad_articles(data_dir: str | None = None) -> list[Article]:
    """SQuAD v1.1 dev as its 48 articles, in file order (the hub copy: in order of first appearance)."""
    grouped: dict[str, dict[str, list]] = {}  # title -> context -> its questions, in order
    for title, context, qid, question, answers, starts in _squad_rows(data_dir):
        grouped.setdefault(title, {}).setdefault(context, []).append((qid, question, answers, starts))
    articles = []
    for i, (title, paragraphs) in enumerate(grouped.items()):
        offset, questions = 0, []
        for context, qas in paragraphs.items():
            for qid, question, answers, starts in qas:
                spans = tuple(sorted({(offset + s, offset + s + len(a)) for a, s in zip(answers, starts)}))
                questions.append(SpanQuestion(qid, question, tuple(answers), spans))
            offset += len(context) + len(PARAGRAPH_SEP)
        text = PARAGRAPH_SEP.join(paragraphs)
        for q in questions:  # the spans must point at the answers, or every relevance judgment is off
            if not all(text[a:b] in q.answers for a, b in q.spans):
                raise ValueError(f"SQuAD {q.qid}: an answer_start does not point at its answer's text")
        articles.append(Article(f"squad-article-{i}", title.replace("_", " "), text, tuple(questions)))
    return articles


_PUBMED_LABELS = ("yes", "no", "maybe")


def load_pubmedqa(data_dir: str | None = None) -> list[BenchmarkItem]:
    """PubMedQA PQA-L: 1,000 questions; split "test" is the official 500, the rest "train"."""
    paths = _files("pubmedqa", data_dir)
    if paths:
        with _open_text(paths[0]) as f:
            records = json.load(f)
        test_ids = set(json.loads(paths[1].read_text())) if paths[1].exists() else set()
        rows = [(pmid, r["QUESTION"], r["CONTEXTS"], r["final_decision"], r.get("LONG_ANSWER", ""))
                for pmid, r in records.items()]
    else:
        rows = [(str(r["pubid"]), r["question"], r["context"]["contexts"], r["final_decision"], r["long_answer"])
                for r in _hub("pubmedqa", data_dir)]
        # the hub copy has no official split: every other PMID in sorted order is the test half
        test_ids = {pmid for i, (pmid, *_) in enumerate(sorted(rows)) if i % 2 == 0}
    items = []
    for pmid, question, contexts, label, long_answer in rows:
        if label not in _PUBMED_LABELS:
            raise ValueError(f"PubMedQA {pmid}: unexpected label {label!r}")
        passages = [Passage(f"pubmed-{pmid}-{i}", question, c) for i, c in enumerate(contexts)]
        items.append(BenchmarkItem(pmid, question, [label], passages, {p.pid for p in passages},
                                   split="test" if pmid in test_ids else "train", gold_sentences=[long_answer]))
    return items


def load_hotpotqa(data_dir: str | None = None) -> list[BenchmarkItem]:
    """HotpotQA, distractor setting: each question with its gold and distractor paragraphs.

    The data folder holds two files in different schemas (the first 103 dev questions, and the
    authors' 100-question sample); both are read and de-duplicated by question id. Splits alternate
    within each file (even positions "test", odd "train"), so both schemas are in both splits and no
    question is in both.
    """
    paths = _files("hotpotqa", data_dir)
    items: dict[str, BenchmarkItem] = {}

    position: dict[str, int] = {}  # per file, so each schema gives half its questions to each split

    def add(qid, question, answer, paragraphs, gold_titles, gold_sentences, origin):
        if qid in items:
            return
        n = position[origin] = position.get(origin, -1) + 1
        passages = [Passage(f"hotpot-{qid}-{i}", t, "".join(s).strip()) for i, (t, s) in enumerate(paragraphs)]
        items[qid] = BenchmarkItem(qid, question, [answer], passages, {p.pid for p in passages if p.title in gold_titles},
                                   split="test" if n % 2 == 0 else "train", gold_sentences=gold_sentences)

    def gold_sents(paragraphs, facts):
        by_title = dict((t, s) for t, s in paragraphs)
        return [by_title[t][i].strip() for t, i in facts if t in by_title and i < len(by_title[t])]

    if paths:
        with _open_text(paths[0]) as f:
            for r in json.load(f):
                facts = [tuple(x) for x in r["supporting_facts"]]
                add(r["_id"], r["question"], r["answer"], r["context"], {t for t, _ in facts},
                    gold_sents(r["context"], facts), "subset")
        if paths[1].exists():
            with _open_text(paths[1]) as f:
                for r in json.load(f):
                    # distractor entries are [title, sentences, retrieval score]
                    paragraphs = [(r["title_a"], r["para_a"]), (r["title_b"], r["para_b"]),
                                  *((d[0], d[1]) for d in r["distractors"])]
                    facts = [(r["title_a"], i) for i in r["supporting_facts"][0]] + \
                            [(r["title_b"], i) for i in r["supporting_facts"][1]]
                    add(r["_id"], r["question"], r["answer"], paragraphs, {r["title_a"], r["title_b"]},
                        gold_sents(paragraphs, facts), "sample")
    else:
        for r in _hub("hotpotqa", data_dir):
            paragraphs = list(zip(r["context"]["title"], r["context"]["sentences"]))
            facts = list(zip(r["supporting_facts"]["title"], r["supporting_facts"]["sent_id"]))
            add(r["id"], r["question"], r["answer"], paragraphs, {t for t, _ in facts}, gold_sents(paragraphs, facts), "hub")
    return list(items.values())


def load_nq_open(data_dir: str | None = None) -> list[BenchmarkItem]:
    """NaturalQuestions-Open, oracle setting: each question with its ~100-word gold passage."""
    paths = _files("nq_open", data_dir)
    if not paths:
        raise _missing("nq_open", data_dir)
    items = []
    with _open_text(paths[0]) as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            ctx = r["ctxs"][0]
            passage = Passage(f"nq-{i}", ctx["title"], ctx["text"])
            items.append(BenchmarkItem(f"nq-{i}", r["question"], list(r["answers"]), [passage], {passage.pid}))
    return items
