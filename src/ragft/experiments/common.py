"""What every chapter's experiment does first, in one place."""

from __future__ import annotations

from ..results import ChapterRun


def start(chapter: str, params, embedder: bool = False):
    """Network policy, seeds and threads from the parameters; the chapter's results collector; the
    language model (and the embedder, on the model's device); the knowledge base.
    Returns (run, lm, embed_model or None, kb)."""
    from .. import models, rag, settings
    from ..corpus import build_kb

    settings.configure(params)
    run = ChapterRun(chapter, params)
    with run.stage("load_models"):
        lm = models.load_lm(params.model, params.device, params.dtype)
        embed_model = rag.load_embedder(params.embedder, lm.device) if embedder else None
    return run, lm, embed_model, build_kb(params.kb_seed, params.kb)
