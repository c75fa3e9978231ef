"""What every chapter's experiment does first, in one place."""

from __future__ import annotations

from .. import metrics
from ..results import ChapterRun

REFUSAL_SUFFIX = " refusal"  # the condition that holds a condition's unanswerable questions


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


def split_outcomes(items: list, gen, texts: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    """Per-question outcomes of one condition, by meaning: "answer" holds the "contains" score of
    each answerable question, "refusal" 1 or 0 for each unanswerable one; each with {qid: (prompt
    tokens, completion tokens)}. `texts`: the answers to score when they are not the generated texts
    themselves (a RAFT reply's final answer). A part with no questions is left out."""
    answered, refused = metrics.answer_outcomes(items, gen.texts if texts is None else texts)
    tokens = {it.qid: (p, c) for it, p, c in zip(items, gen.prompt_tokens, gen.completion_tokens)}
    return {part: (scores, {q: tokens[q] for q in scores})
            for part, scores in (("answer", answered), ("refusal", refused)) if scores}


def record_answers(run: ChapterRun, name: str, items: list, gen, texts: list[str] | None = None) -> None:
    """Record a condition's outcomes: answers under `name`, refusals under `name + " refusal"`."""
    for part, (scores, tokens) in split_outcomes(items, gen, texts).items():
        run.record(name if part == "answer" else name + REFUSAL_SUFFIX, scores, tokens=tokens)
