"""Ingestion into Chroma through LlamaIndex, kept in sync with a corpus.

documents -> LlamaIndex SentenceSplitter (chunk size counted in the embedder's own tokens, so a chunk
never silently exceeds what the embedder reads) -> MiniLM embeddings -> a Chroma collection.

Chunk ids are stable: `<doc_id>#<content hash>#<chunk number>`. Ingestion compares each document's
hash with what the collection holds: unchanged documents cost nothing, a changed document's old
chunks are deleted before its new ones go in, and documents that left the corpus are deleted. The
collection lives on disk (`PersistentClient`) or on a Chroma server (`HttpClient`, when a host is
given); the code is the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import models
from .sources import Source

DOC_ID, HASH = "doc_id", "doc_hash"  # metadata keys this module relies on
MAX_BATCH = 5000  # Chroma rejects larger writes (its limit is 5,461 here)


def load_embedder(name: str = "minilm", device: str = "cpu", batch_size: int = 64):
    """The registry's embedder as a LlamaIndex embedding model (normalized vectors)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=models.embedder_path(name), device=device,
                                embed_batch_size=batch_size, normalize=True)


def bare_encoder(embed_model):
    """The sentence-transformers model inside LlamaIndex's wrapper: the 'embedder alone' baseline."""
    return embed_model._model


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


@dataclass
class IngestReport:
    docs_added: int = 0
    docs_updated: int = 0
    docs_unchanged: int = 0
    docs_deleted: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0  # of which computing embeddings

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_added / self.seconds if self.seconds else float("nan")


class ChunkStore:
    """One Chroma collection of embedded chunks, for one chunking setting.

    path: a folder for a local PersistentClient; host (and port): a Chroma server instead.
    The chunking setting is written into the collection's metadata, and reopening a collection with
    another setting is refused: mixing chunk sizes in one collection would corrupt every measurement.
    """

    def __init__(self, name: str, *, path: str | Path | None = None, host: str | None = None, port: int = 8000,
                 embed_model=None, chunk_size: int = 256, chunk_overlap: int = 32, hnsw: dict | None = None):
        import chromadb

        if not 3 <= len(name) <= 512:
            raise ValueError(f"collection name {name!r}: Chroma needs 3-512 characters")
        if chunk_overlap >= chunk_size:
            raise ValueError(f"chunk_overlap={chunk_overlap} must be smaller than chunk_size={chunk_size}")
        self._open_args = dict(name=name, path=path, host=host, port=port, embed_model=embed_model,
                               chunk_size=chunk_size, chunk_overlap=chunk_overlap, hnsw=hnsw)
        if host:
            self.client = chromadb.HttpClient(host=host, port=port)
        elif path is not None:
            self.client = chromadb.PersistentClient(path=str(path))
        else:
            raise ValueError("give a folder (path=...) for a local store or a host for a Chroma server")
        self.embed_model = embed_model
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        setting = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
                   "embedder": getattr(embed_model, "model_name", "none")}
        self.collection = self.client.get_or_create_collection(
            name, embedding_function=None,  # Chroma's default would download a model
            metadata=setting, configuration={"hnsw": {"space": "cosine", **(hnsw or {})}})
        stored = {k: self.collection.metadata.get(k) for k in setting} if self.collection.metadata else setting
        if stored != setting:
            raise ValueError(f"collection {name!r} was built with {stored}, not {setting}: "
                             "use another collection name (or delete it) for another chunking setting")

    def reopen(self) -> "ChunkStore":
        """A fresh client on the same collection, as a new process would see it (Chroma shares one
        client per folder within a process; index settings such as ef_search apply on load)."""
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        return ChunkStore(**self._open_args)

    # -- ingestion ------------------------------------------------------------------------------

    def count(self) -> int:
        return self.collection.count()

    def doc_hashes(self) -> dict[str, set[str]]:
        """doc_id -> the content hashes of its chunks in the collection."""
        out: dict[str, set[str]] = {}
        total, offset = self.count(), 0
        while offset < total:
            got = self.collection.get(include=["metadatas"], limit=MAX_BATCH, offset=offset)
            for meta in got["metadatas"]:
                out.setdefault(meta[DOC_ID], set()).add(meta[HASH])
            offset += MAX_BATCH
        return out

    def split(self, sources: list[Source]):
        """LlamaIndex nodes with stable ids and the metadata filters use (doc id, title, version, kind)."""
        from llama_index.core import Document
        from llama_index.core.node_parser import SentenceSplitter

        splitter = SentenceSplitter(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap,
                                    tokenizer=token_counter(self.embed_model))
        nodes = []
        for s in sources:
            meta = {DOC_ID: s.doc_id, "title": s.title, "version": s.version, "kind": s.kind, HASH: s.content_hash}
            doc = Document(text=s.text, id_=s.doc_id, metadata=meta,
                           # the title helps the embedding; ids and hashes would only add noise
                           excluded_embed_metadata_keys=[DOC_ID, "version", "kind", HASH],
                           excluded_llm_metadata_keys=[DOC_ID, "version", "kind", HASH])
            for i, node in enumerate(splitter.get_nodes_from_documents([doc])):
                node.id_ = f"{s.doc_id}#{s.content_hash}#{i:04d}"
                nodes.append(node)
        return nodes

    def embed_texts(self, sources: list[Source]) -> list[str]:
        """Exactly the texts ingestion embeds for these sources (chunk text plus title)."""
        from llama_index.core.schema import MetadataMode

        return [n.get_content(metadata_mode=MetadataMode.EMBED) for n in self.split(sources)]

    def ingest(self, sources: list[Source], keep: set[str] = frozenset(), prune: bool = True) -> IngestReport:
        """Bring the collection in line with `sources`.

        keep: doc ids to leave alone although they are not in `sources` (say, files that could not
        be read this time: a bad file must not delete what was indexed from it before).
        prune: delete documents that are neither in `sources` nor in `keep`.
        """
        from llama_index.core.schema import MetadataMode

        if self.embed_model is None:
            raise ValueError("this store was opened without an embedder: pass embed_model to ingest documents")
        ids = [s.doc_id for s in sources]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"duplicate document ids: {dupes[:5]}")
        start, report = time.perf_counter(), IngestReport()
        existing = self.doc_hashes()
        todo = []
        for s in sources:
            hashes = existing.get(s.doc_id)
            if hashes == {s.content_hash}:
                report.docs_unchanged += 1
                continue
            if hashes:
                report.docs_updated += 1
                report.chunks_deleted += self._delete_doc(s.doc_id)
            else:
                report.docs_added += 1
            todo.append(s)
        if prune:
            for doc_id in sorted(set(existing) - set(ids) - set(keep)):
                report.docs_deleted += 1
                report.chunks_deleted += self._delete_doc(doc_id)
        nodes = self.split(todo)
        t = time.perf_counter()
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        vectors = self.embed_model.get_text_embedding_batch(texts) if texts else []
        report.embed_seconds = time.perf_counter() - t
        for node, vector in zip(nodes, vectors):
            node.embedding = vector
        self._add_nodes(nodes)
        report.chunks_added = len(nodes)
        report.seconds = time.perf_counter() - start
        return report

    def _add_nodes(self, nodes) -> None:
        """Through LlamaIndex's Chroma store (which keeps the node in the metadata, so LlamaIndex can
        read the collection back), in batches: its own batch limit is above Chroma's."""
        from llama_index.vector_stores.chroma import ChromaVectorStore

        store = ChromaVectorStore(chroma_collection=self.collection)
        for i in range(0, len(nodes), MAX_BATCH):
            store.add(nodes[i:i + MAX_BATCH])

    def _delete_doc(self, doc_id: str) -> int:
        n = len(self.collection.get(where={DOC_ID: doc_id}, include=[])["ids"])
        self.collection.delete(where={DOC_ID: doc_id})
        return n

    def add_vectors(self, ids: list[str], vectors, doc_id: str = "filler") -> float:
        """Add precomputed vectors (the scale benchmark's fillers); returns the seconds it took."""
        start = time.perf_counter()
        for i in range(0, len(ids), MAX_BATCH):
            n = len(ids[i:i + MAX_BATCH])
            self.collection.add(ids=ids[i:i + MAX_BATCH], embeddings=vectors[i:i + MAX_BATCH],
                                metadatas=[{DOC_ID: doc_id, HASH: "-"}] * n)
        return time.perf_counter() - start

    # -- reading --------------------------------------------------------------------------------

    def search(self, query_vectors, k: int, where: dict | None = None) -> list[list[Hit]]:
        """Nearest chunks for each query vector (cosine similarity, best first)."""
        got = self.collection.query(query_embeddings=query_vectors, n_results=k, where=where,
                                    include=["documents", "metadatas", "distances"])
        return [[Hit(cid, meta[DOC_ID], meta.get("title", ""), text or "", 1.0 - dist)
                 for cid, text, meta, dist in zip(*row)]
                for row in zip(got["ids"], got["documents"], got["metadatas"], got["distances"])]

    def all_chunks(self, where: dict | None = None) -> list[Hit]:
        """Every chunk (for keyword search and reranker features), in id order."""
        got = self.collection.get(where=where, include=["documents", "metadatas"])
        rows = sorted(zip(got["ids"], got["documents"], got["metadatas"]))
        return [Hit(cid, meta[DOC_ID], meta.get("title", ""), text or "", 0.0) for cid, text, meta in rows]

    def as_llama_index(self):
        """The collection as a LlamaIndex VectorStoreIndex, reopened without re-embedding."""
        from llama_index.core import VectorStoreIndex
        from llama_index.vector_stores.chroma import ChromaVectorStore

        return VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=self.collection),
                                                  embed_model=self.embed_model)
