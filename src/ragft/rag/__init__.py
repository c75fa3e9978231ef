"""The RAG layer every chapter reuses: sources -> ChunkStore (LlamaIndex + Chroma) -> Retriever ->
answers with citations, and the measurements around them."""

from .answer import CITE_SYSTEM, answer_batch, answer_live, cited_messages, parse_citations, rag_messages, strip_citations
from .evaluation import citation_scores, latency_summary, refusal_sweep, retrieval_scores, threshold_for_false_refusals
from .retrieve import Retriever, above_threshold, fuse
from .sources import Corpus, CorpusError, QAItem, Source, SpanItem, article_items, articles, benchmark_items, document_text, kb_documents, kb_items, kb_pages, load_folder, load_questions
from .store import ChunkStore, Hit, IngestReport, StoreBusy, StoreChanged, check_chunk_size, embedder_window, kb_store, load_embedder
