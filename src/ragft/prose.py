"""What the chapters' prose cites, glued (myst-nb): numbers, the sentence and verdict of each stated
comparison, and a reader's copy of them in a running kernel. Presentation only: the results file
(ragft.results) holds what was measured, this module words it."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from . import stats
from .jsonl import json_safe
from .plan import glue_key, the_plan, unfit
from .stats import DECIDED, NOT_FIT


# Output metadata key of a reader's copy: what the book's prose glues, shown as a visible output for
# whoever runs the notebook (Jupyter, Colab, papermill's output notebook), where `{glue:text}` roles
# do not render. The book build drops these outputs (run.stage_book), so the HTML shows each once.
READER_COPY = "ragft_reader_copy"
_pending: list[str] = []  # this cell's glued numbers and words, shown together when the cell ends


def glue(key: str, value) -> None:
    """myst-nb glue without display (the book renders it where the prose cites it), with numpy
    scalars made plain numbers first (glued numpy values render as np.float64(...) and fail the
    strict build); in a running kernel also a reader's copy: a figure or table at once, numbers and
    words listed at the end of the cell."""
    from myst_nb import glue as _glue

    value = json_safe(value) if isinstance(value, (numbers.Number, str)) else value
    _glue(key, value, display=False)
    _reader_copy(key, value)


def _reader_copy(key: str, value) -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):  # a plain interpreter: nobody to show it to
        return
    from IPython.display import display

    if value is None or isinstance(value, (numbers.Number, str)):  # None: a NaN made JSON-safe
        if not _pending and _flush_pending not in shell.events.callbacks["post_execute"]:
            shell.events.register("post_execute", _flush_pending)
        _pending.append(f"{key}: {_plain(value)}")
    else:  # a figure or a table, as the cell would show it
        display(value, metadata={READER_COPY: key})


def _plain(value) -> str:
    if value is None:
        return "not a finite number"
    if isinstance(value, float) and not isinstance(value, bool):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _flush_pending() -> None:
    from IPython.display import display

    if _pending:
        text = "What the text cites from this cell:\n" + "\n".join(_pending)
        display({"text/plain": text}, raw=True, metadata={READER_COPY: "values"})
        _pending.clear()


def glue_comparison(key: str, comparison, a_label: str | None = None, b_label: str | None = None,
                    pct: bool = True, metrics: dict | None = None) -> None:
    """Glue a comparison for the prose: `<key>` is its full sentence (verdict, difference, interval,
    p, n), `<key>_verdict` the verdict alone, `<key>_diff` the difference. With the chapter's
    `metrics`, a trained arm that missed a fitness rule of this chapter makes both say so, as the
    ledger will (ragft.plan.adjust), rather than show the raw verdict."""
    c = comparison.as_dict()
    chapter = the_plan().get(c["claim"]).chapter
    if unfit(c, {chapter: metrics or {}}, known_only=True):  # this chapter's own rules; others wait for the ledger
        c["verdict"] = NOT_FIT
    glue(key, stats.sentence(c, a_label, b_label, pct))
    glue(f"{key}_verdict", verdict_text(c))
    glue(f"{key}_diff", comparison.diff)


def verdict_text(c: dict) -> str:
    """A chapter's verdict on one comparison, as the prose cites it: a primary comparison decided at
    its raw p says that chapter 7 adjusts it for the book's number of tests; a secondary one says it
    is exploratory."""
    if c.get("role") == "secondary":
        return f"exploratory, {c['verdict']}"
    if c["verdict"] in DECIDED and c.get("p_adjusted") is None:
        return f"{c['verdict']} at the raw p (chapter 7 adjusts it for the number of tests in the book's family)"
    return c["verdict"]


@dataclass
class StatedComparison:
    """A comparison the prose states, by its id in the analysis plan, with the labels its sentence
    uses; `comparison` is None (and `missing` says why) when this run's parameters or data leave one
    side unmeasured, so the sentence says so instead of the build failing on a missing glue key. Its
    glue keys derive from the id (ragft.plan.glue_key): K1-rag-vs-dsf is glued as k1_rag_vs_dsf."""

    comparison_id: str
    comparison: object | None  # ragft.stats.Comparison
    a_label: str = ""
    b_label: str = ""
    missing: str = ""
    pct: bool = True  # differences of rates read as points; other scores as numbers

    @property
    def key(self) -> str:
        return glue_key(self.comparison_id)

    def glue(self, metrics: dict | None = None) -> None:
        if self.comparison is not None:
            glue_comparison(self.key, self.comparison, self.a_label, self.b_label, self.pct, metrics)
        else:
            glue(self.key, f"not measured in this run: {self.missing}")
            glue(f"{self.key}_verdict", "not measured")
            glue(f"{self.key}_diff", float("nan"))


def glue_findings(metrics: dict, comparisons, sentences: dict | None = None) -> None:
    """Glue what a chapter's prose cites: its metrics, its stated comparisons, its sentences."""
    glue_metrics(metrics)
    for stated in comparisons:
        stated.glue(metrics)
    for key, sentence in (sentences or {}).items():
        glue(key, sentence)


def glue_metrics(metrics: dict, prefix: str = "") -> None:
    """Glue every metric so the prose can cite it with {glue:text}."""
    for key, value in metrics.items():
        glue(prefix + key, value)
