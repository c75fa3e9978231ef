"""What goes into the index: source documents, and the questions asked of them.

Three corpora, one record type (`Source`):
  kb_pages        the knowledge base, as catalogue pages of several documents each (real manuals and
                  wikis are long pages, so chunk size has something to cut)
  load_folder     a reader's own folder of .md / .txt / .html files, with a list of what was skipped
  passages        benchmark passages (SQuAD paragraphs ...)

and one question type (`QAItem`) that carries what decides whether a retrieved chunk is relevant:
gold sentences (knowledge base), gold document ids (benchmarks), or only the answers (a reader's
questions file without document ids).
"""

from __future__ import annotations

import codecs
import hashlib
import html.parser
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonl import read_rows
from ..metrics import normalize

SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")


class CorpusError(ValueError):
    """A corpus or questions file that cannot be used; the message says why and what to change."""


@dataclass(frozen=True)
class Source:
    doc_id: str
    title: str
    text: str
    version: str = "v1"
    kind: str = "document"

    @property
    def content_hash(self) -> str:
        """Changes whenever anything that ends up in the index changes."""
        payload = "\x1f".join([self.title, self.version, self.kind, self.text])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Corpus:
    sources: list[Source]
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_table(self):
        import pandas as pd

        return pd.DataFrame([vars(s) for s in self.skipped], columns=["path", "reason"])


@dataclass(frozen=True)
class QAItem:
    qid: str
    question: str
    answers: tuple[str, ...]
    kind: str = "single"  # single | multihop | unanswerable
    gold_sentences: tuple[str, ...] = ()
    gold_doc_ids: tuple[str, ...] = ()
    line: int = field(default=0, kw_only=True)  # its line in the questions file it was read from (0: none)
    # ids of judged questions a reader confirms this (training) question is not, though the near-duplicate
    # rule would call them one question (chapter 8's read_inputs keeps it and says so)
    distinct_from: tuple[str, ...] = field(default=(), kw_only=True)

    def is_relevant(self, doc_id: str, text: str) -> bool:
        """Does a retrieved chunk hold what answers this question? The most specific evidence wins."""
        if self.gold_sentences:
            flat = " ".join(text.split())
            return any(s in flat for s in self.gold_sentences)
        if self.gold_doc_ids:
            return doc_id in self.gold_doc_ids
        norm = normalize(text)
        return any(normalize(a) and normalize(a) in norm for a in self.answers)


@dataclass(frozen=True)
class SpanItem(QAItem):
    """A question whose answer is a span of one document (SQuAD articles): a chunk is relevant when it
    comes from that document and covers a gold span whole. Chunks are exact substrings of their
    document (LlamaIndex's splitter cuts, it does not rewrite), so where a chunk sits is found in the
    document's text; the answer string merely appearing elsewhere does not count."""

    doc_text: str = field(default="", repr=False)
    spans: tuple[tuple[int, int], ...] = ()

    def is_relevant(self, doc_id: str, text: str) -> bool:
        if doc_id not in self.gold_doc_ids or not text:
            return False
        start = self.doc_text.find(text)
        return start >= 0 and any(start <= a and b <= start + len(text) for a, b in self.spans)


def article_items(article) -> list[SpanItem]:
    """A SQuAD article's questions as retrieval items (ragft.corpus.benchmarks.Article)."""
    return [SpanItem(q.qid, q.question, q.answers, "single", (), (article.aid,), article.text, q.spans)
            for q in article.questions]


def articles(items) -> list[Source]:
    """Articles whole, as sources: the splitter chunks each at the store's size."""
    return [Source(a.aid, a.title, a.text, kind="article") for a in items]


# ---------------------------------------------------------------------------------------------
# The knowledge base


def kb_pages(kb, docs_per_page: int = 8) -> list[Source]:
    """The knowledge base as pages: consecutive documents of one kind (a product line's models sit
    side by side), each under its own heading, `docs_per_page` to a page."""
    by_kind: dict[str, list] = {}
    for d in kb.documents:
        by_kind.setdefault(d.kind, []).append(d)
    pages = []
    for kind, docs in by_kind.items():
        for start in range(0, len(docs), docs_per_page):
            part = docs[start:start + docs_per_page]
            title = f"{kind.capitalize()} pages, part {start // docs_per_page + 1}"
            text = "\n\n".join(document_text(d) for d in part)
            pages.append(Source(f"kb-{kind}-{start // docs_per_page + 1}", title, text, kb.version, kind))
    return pages


def kb_documents(kb) -> list[Source]:
    """The knowledge base one document to a source, under the document's own id: a changed document
    is re-indexed alone, as a documentation site re-indexes a changed page. The version is not part
    of a source (it is in its content hash): a document the new version left as it was stays indexed."""
    return [Source(d.doc_id, d.title, document_text(d), "latest", d.kind) for d in kb.documents]


def document_text(d) -> str:
    """A knowledge-base document as every source of it reads: its title as a heading, then its text."""
    return f"## {d.title}\n\n{d.text}"


def kb_items(questions) -> list[QAItem]:
    """Knowledge-base questions (their held-out paraphrase) as retrieval items."""
    return [QAItem(q.qid, q.test_text, tuple(q.answers) if q.kind != "unanswerable" else (), q.kind,
                   tuple(q.gold_sentences)) for q in questions]


def benchmark_items(items) -> list[QAItem]:
    return [QAItem(it.qid, it.question, tuple(it.answers), it.kind, tuple(it.gold_sentences), tuple(sorted(it.gold_pids)))
            for it in items]


def passages(corpus, kind: str = "passage") -> list[Source]:
    return [Source(p.pid, p.title, p.text, kind=kind) for p in corpus]


# ---------------------------------------------------------------------------------------------
# A reader's folder


class _HTMLText(html.parser.HTMLParser):
    """Visible text and <title> of an HTML page (scripts and styles dropped)."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        self._in_title = tag == "title"
        if tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "tr", "section", "article"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def _html_to_text(raw: str) -> tuple[str, str]:
    parser = _HTMLText()
    parser.feed(raw)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line), " ".join(parser.title.split())


def _title_of(text: str, fallback: str) -> str:
    for line in text.splitlines()[:20]:
        if line.startswith("#"):
            return line.lstrip("#").strip() or fallback
    return fallback


def _decode(raw: bytes) -> str:
    """A document's text: UTF-8 (with or without a byte-order mark), or UTF-16 with its byte-order
    mark (what some Windows editors save); anything else is refused with the reason."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ValueError(f"not valid UTF-16 (byte {e.start}): re-save it as UTF-8") from None
    if b"\x00" in raw:
        order = _utf16_without_mark(raw)
        if order:
            raise ValueError(f"UTF-16 ({order}) without a byte-order mark: re-save it as UTF-8 (or as UTF-16 with its mark)")
        raise ValueError("binary file (contains NUL bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start}): re-save it as UTF-8") from None


def _utf16_without_mark(raw: bytes) -> str | None:
    """'little-endian' or 'big-endian' where bytes with NULs read as UTF-16 text without a mark (text in
    the Latin range has a zero high byte in nearly every pair), else None (a binary file)."""
    if len(raw) < 4 or len(raw) % 2:
        return None
    for order, zeros, other in (("little-endian", raw[1::2], raw[0::2]), ("big-endian", raw[0::2], raw[1::2])):
        if zeros.count(0) >= 0.9 * len(zeros) and other.count(0) <= 0.1 * len(other):
            try:
                text = raw.decode("utf-16-le" if order == "little-endian" else "utf-16-be")
            except UnicodeDecodeError:
                return None
            shown = sum(c.isprintable() or c.isspace() for c in text)
            return order if shown >= 0.95 * len(text) else None
    return None


def _walk(root: Path):
    """(path, reason to skip it or "") for every entry under root, in path order, without following a
    link out of it: hidden entries and links are named with their reason, folders are descended."""
    import os

    inside = root.resolve()
    out = []
    for here, dirs, files in os.walk(root):  # links to folders are listed, never followed
        here = Path(here)
        for name in sorted(dirs):
            path = here / name
            if name.startswith("."):
                out.append((path, "hidden folder: not read"))
            elif path.is_symlink():
                out.append((path, "a link to a folder: not followed (copy the folder in instead)"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                out.append((path, "hidden file: not read"))
            elif path.is_symlink():
                try:
                    target = path.resolve()
                except (RuntimeError, OSError):  # a loop of links (Python raises RuntimeError on one)
                    out.append((path, "a loop of links: not read"))
                    continue
                if not target.exists():
                    out.append((path, f"a link to nothing ({os.readlink(path)})"))
                elif not target.is_relative_to(inside):
                    out.append((path, "a link to a file outside the corpus folder: not read"))
                elif target.is_file():
                    out.append((path, ""))
                else:
                    out.append((path, "a link to something that is not a file"))
            elif path.is_file():
                out.append((path, ""))
            else:  # never opened: reading a named pipe would wait for a writer for ever
                out.append((path, "not a regular file (a named pipe, socket or device): not read"))
    return sorted(out, key=lambda entry: entry[0].relative_to(root).parts)  # path order: the first of two duplicates is kept


def load_folder(folder: str | Path, max_file_mb: float = 2.0) -> Corpus:
    """Every usable document under a folder; the rest listed with the reason it was skipped.

    Skipped, never fatal, each with its reason in the skipped table: other file types, files over
    `max_file_mb`, binary or non-UTF-8 files (UTF-16 without a byte-order mark named as such), empty
    files, exact duplicates of an earlier file, hidden files and folders (.git, .DS_Store), entries
    that are not regular files (named pipes, sockets, devices: never opened), and links: the folder is
    a boundary, so a link that resolves outside it is not read (nor one to nothing, nor a loop of
    links, nor a linked folder). A folder with nothing
    usable raises CorpusError listing what it found."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CorpusError(f"corpus_dir={str(folder)!r} is not a folder: give a folder of .md, .txt or .html files")
    sources, skipped, seen = [], [], {}
    for path, why in _walk(root):
        rel = path.relative_to(root).as_posix()
        if why:
            skipped.append(Skipped(rel, why))
            continue
        if path.suffix.lower() not in SUFFIXES:
            skipped.append(Skipped(rel, f"unsupported type {path.suffix or '(none)'}: use one of {', '.join(SUFFIXES)}"))
            continue
        size = path.stat().st_size
        if size > max_file_mb * 1e6:
            skipped.append(Skipped(rel, f"too large: {size / 1e6:.1f} MB > max_file_mb={max_file_mb}"))
            continue
        raw = path.read_bytes()
        try:
            text = _decode(raw)
        except ValueError as e:
            skipped.append(Skipped(rel, str(e)))
            continue
        title = ""
        if path.suffix.lower() in (".html", ".htm"):
            text, title = _html_to_text(text)
        text = text.strip()
        if not text:
            skipped.append(Skipped(rel, "empty"))
            continue
        digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
        if digest in seen:
            skipped.append(Skipped(rel, f"duplicate of {seen[digest]}"))
            continue
        seen[digest] = rel
        sources.append(Source(rel, title or _title_of(text, path.stem), text, kind=path.suffix.lower().lstrip(".")))
    if not sources:
        found = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:10]) or "no files at all"
        raise CorpusError(f"corpus_dir={str(folder)!r} holds no usable document ({found})")
    return Corpus(sources, skipped)


# answers: [] marks a question the corpus cannot answer; distinct_from: ids of judged questions a training
# question is confirmed not to be (chapter 8's near-duplicate rule)
QUESTION_KEYS = ("id", "question", "answers", "doc_id", "distinct_from")


def load_questions(path: str | Path, documents: set[str] | None = None,
                   skipped: dict[str, str] | None = None) -> list[QAItem]:
    """A JSONL file, one question per line: {"question": "...", "answers": ["...", ...]}, with an
    optional "id" and "doc_id" (a path relative to the corpus folder, or a list of them) naming the
    gold document. A question the corpus cannot answer says so with "answers": [] (the one way).
    Refused, with the file, the line and the fix: a missing or unknown key (a misspelt "answers"
    would otherwise read as an unanswerable question), a question that is not text, an empty answer,
    and, given the corpus's `documents` (and its `skipped` files with their reasons), a doc_id that
    names no document of it. A UTF-8 byte-order mark is accepted."""
    import difflib

    path = Path(path).expanduser()
    if not path.is_file():
        raise CorpusError(f"questions_file={str(path)!r} does not exist: give a JSONL file or leave it empty")
    items, lines = [], {}
    for n, row in read_rows(path, CorpusError):
        where = f"{path.name} line {n}"
        if not isinstance(row, dict):
            raise CorpusError(f'{where} is not an object: give {{"question": "...", "answers": [...]}}')
        unknown = [k for k in row if k not in QUESTION_KEYS]
        if unknown:
            hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, QUESTION_KEYS, 1)[0]!r}?)"
                     if difflib.get_close_matches(k, QUESTION_KEYS, 1) else repr(k) for k in unknown]
            raise CorpusError(f"{where} has unknown keys {', '.join(hints)}: a line takes {list(QUESTION_KEYS)}")
        question = row.get("question")
        if question is None or (isinstance(question, str) and not question.strip()):
            raise CorpusError(f'{where} has no "question"')
        if not isinstance(question, str):
            raise CorpusError(f'{where}: "question" must be text, not {question!r}')
        if "answers" not in row:
            raise CorpusError(f'{where} has no "answers": give the accepted answers as a list of strings, '
                              f'or "answers": [] for a question the documents cannot answer')
        answers = row["answers"]
        if isinstance(answers, str):  # README's format is a list; one string is refused, not guessed at
            raise CorpusError(f'{where}: "answers" is one string, {answers!r}: give a list, ["{answers}"] '
                              f'(several accepted answers go in the one list)')
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise CorpusError(f'{where}: "answers" must be a list of strings, not {row["answers"]!r}')
        if any(not a.strip() for a in answers):
            raise CorpusError(f'{where}: an empty answer can never be matched: remove it (an unanswerable '
                              f'question has "answers": [])')
        doc_ids = row.get("doc_id") or ()
        doc_ids = (doc_ids,) if isinstance(doc_ids, str) else doc_ids
        if not isinstance(doc_ids, (list, tuple)) or not all(isinstance(d, str) for d in doc_ids):
            raise CorpusError(f'{where}: "doc_id" must be a path or a list of paths, not {doc_ids!r}')
        for d in doc_ids if documents is not None else ():
            if d not in documents:
                why = f"it was skipped ({skipped[d]})" if skipped and d in skipped else "the corpus folder has no such document"
                raise CorpusError(f'{where}: "doc_id" {d!r} names no indexed document: {why}; use a path '
                                  f"relative to the corpus folder, such as {sorted(documents)[:3]}")
        distinct = row.get("distinct_from") or ()
        distinct = (distinct,) if isinstance(distinct, str) else distinct
        if not isinstance(distinct, (list, tuple)) or not all(isinstance(d, str) for d in distinct):
            raise CorpusError(f'{where}: "distinct_from" must be a question id or a list of them, not {distinct!r}')
        qid = str(row.get("id", f"q{n}"))
        if qid in lines:
            # outcomes are kept per question id: two questions with one id would overwrite each other
            raise CorpusError(f'{where} repeats the id {qid!r} of line {lines[qid]}: give each question its own "id"')
        lines[qid] = n
        items.append(QAItem(qid, question.strip(), tuple(answers), "single" if answers else "unanswerable",
                            (), tuple(doc_ids), line=n, distinct_from=tuple(distinct)))
    if not items:
        raise CorpusError(f"questions_file={str(path)!r} holds no question")
    return items
