"""Corpora: the synthetic knowledge base (the embedded default) and loaders for public benchmarks."""

from .kb import REFUSAL_ANSWER, STRUCTURED_FIELDS, Document, KBSizes, KnowledgeBase, Question, build_kb

__all__ = ["REFUSAL_ANSWER", "STRUCTURED_FIELDS", "Document", "KBSizes", "KnowledgeBase", "Question", "build_kb"]
