"""Results files with provenance (ragft.host measures the host); ragft.prose puts their numbers in the
chapters' prose.

One channel: each step of a chapter returns what it measured in a `Measured` (with its typed result);
`state_comparisons` judges every comparison the plan declares for the chapter on those outcomes,
writing nothing; the chapter's one recording step makes a `ChapterRun` (its parameters, its run
folder, its `Clock`) and saves them together, once. A chapter opens its run folder and starts its
clock with `open_chapter`.

Each chapter writes one file, <run dir>/results/<chapter>.json:
  chapter, profile, params,
  metrics       flat name -> number: the headline figures
  metric_rules  name -> {"kind", "n"?, "tol"?}: what each metric is, which decides how the drift
                check compares it (ragft.drift): declared by the chapter, never guessed from a name
  outcomes      condition -> {question id -> score}: every scored condition, per question
  outcome_tokens condition -> {question id -> [prompt tokens, completion tokens]}
  comparisons   the paired comparisons the chapter states (ragft.stats.Comparison as dicts)
  artifacts     name -> path of what later chapters of the same run reuse (trained adapters)
  tables (name -> list of row dicts), timings (wall_s and per-stage seconds), provenance,
  and any named records a chapter adds beside them (`extra_keys`: the verdict chapter's `ledger`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import settings
from .config import as_dict
from .files import hold_chapter, read_json, write_atomically
from .host import provenance
from .train import units
from .jsonl import json_safe
from .plan import PILOT, judge_chapter, the_draw, the_plan
from .prose import StatedComparison
from .stats import RATE, score_kind

# Metric kinds: what a number is decides how a rerun may move it (ragft.drift holds the tolerances).
METRIC_KINDS = {
    "rate": "a share of n questions (accuracy, recall@k): near-tie answers may flip on another CPU",
    "mean": "a mean of n per-question scores in [0, 1] (F1): moves like a rate",
    "derived": "arithmetic on other measured metrics (a ratio, a difference): its own stated tolerance",
    "exact": "deterministic arithmetic: token counts, costs, sizes, parameter counts",
    "choice": "an argmax over conditions (best k, best P): flips with near ties; its comparison carries the finding",
    "machine": "a measurement of this machine (time, memory, throughput): not compared",
}


@dataclass
class Measured:
    """What one step of a chapter measured, returned to its caller: per-question outcomes by condition
    (with their tokens), headline metrics with their kinds (METRIC_KINDS), tables and the artifacts later
    chapters reuse. A step fills its own and returns it; nothing writes into another step's. The
    chapter's one recording step hands them all to `ChapterRun.save`."""

    outcomes: dict = field(default_factory=dict)
    outcome_tokens: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    metric_rules: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)

    def metric(self, key: str, value, kind: str, n: int | None = None, tol: float | None = None,
               none_means: str | None = None):
        """A headline metric with its kind (METRIC_KINDS); rates and means need their n, derived metrics
        their tolerance; a metric that may be None says what None means (a crossover that never
        happens). Returns the value."""
        if kind not in METRIC_KINDS:
            raise ValueError(f"metric {key}: kind={kind!r} is not allowed: use one of {sorted(METRIC_KINDS)}")
        if kind in ("rate", "mean") and not (isinstance(n, int) and n >= 1):
            raise ValueError(f"metric {key}: a {kind} needs the number of questions behind it (n >= 1), got {n!r}")
        if kind == "derived" and not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"metric {key}: a derived metric needs its tolerance (tol >= 0), got {tol!r}")
        if value is None and none_means is None:
            raise ValueError(f"metric {key}: None is a number only where the metric says what it means (none_means)")
        if key in self.metrics:
            raise ValueError(f"metric {key} is measured twice by one step")
        self.metrics[key] = value
        self.metric_rules[key] = {"kind": kind, **({"n": n} if n is not None else {}),
                                  **({"tol": tol} if tol is not None else {}),
                                  **({"none_means": none_means} if none_means is not None else {})}
        return value

    def record(self, condition: str, scores: dict, tokens: dict | None = None) -> None:
        """A condition's per-question outcomes: {question id: score} (1/0 for right/wrong, or a
        continuous score), and optionally {question id: (prompt tokens, completion tokens)}."""
        if not scores:
            raise ValueError(f"condition {condition!r}: no outcomes to record")
        if len({str(q) for q in scores}) != len(scores):
            raise ValueError(f"condition {condition!r}: question ids are not unique as strings")
        if condition in self.outcomes:
            raise ValueError(f"condition {condition!r} is recorded twice by one step")
        self.outcomes[condition] = {str(q): float(v) for q, v in scores.items()}
        if tokens is not None:
            self.outcome_tokens[condition] = {str(q): [int(p), int(c)] for q, (p, c) in tokens.items()}

    # It reads as its metrics: headline["closed_book_ll_acc"], "x" in headline, headline.get("x")
    def __getitem__(self, key: str):
        return self.metrics[key]

    def __contains__(self, key: str) -> bool:
        return key in self.metrics

    def get(self, key: str, default=None):
        return self.metrics.get(key, default)

    def table(self, name: str, rows) -> None:
        """A table of the results file (a list of row dicts, or any JSON-able value)."""
        if name in self.tables:
            raise ValueError(f"table {name!r} is kept twice by one step")
        self.tables[name] = rows

    def update(self, other: "Measured") -> None:
        """Take in what a helper of the same step measured (answer_outcomes, a hand-over); a name both
        hold is an error (each condition, metric, table and artifact has one author)."""
        for name in ("outcomes", "outcome_tokens", "metrics", "metric_rules", "tables", "artifacts"):
            mine, theirs = getattr(self, name), getattr(other, name)
            twice = sorted(set(mine) & set(theirs))
            if twice:
                raise ValueError(f"{name} {twice} are measured twice: each condition, metric, table and "
                                 "artifact has one author")
            mine.update(theirs)

    @classmethod
    def merged(cls, *parts: "Measured | None") -> "Measured":
        """Several steps' records in one, in their order (None: a step that did not run)."""
        out = cls()
        for part in parts:
            if part is not None:
                out.update(part)
        return out


def state_comparisons(chapter: str, outcomes: dict, labels: dict[str, tuple], choices: dict | None = None,
                      unmeasured: dict[str, str] | None = None, *, profile: str | None
                      ) -> dict[str, StatedComparison]:
    """Every comparison the plan declares for `chapter` (ragft.plan.judge_chapter, with the run's
    `choices` for the plan's placeholders and the chapter's reasons for the arms its parameters leave
    out, `unmeasured`), judged on `outcomes`, each with the labels its sentence gives its two arms
    (`labels`: {comparison id: (a label, b label)}, one for each declared comparison). A difference of
    two rates reads in points (the plan's kind "binary", or a seeded arm's mean of right/wrong outcomes),
    any other as a number, unless its labels carry a third item, True for points: a continuous score on
    a 0-1 scale (a share of fields right) also reads in points. `profile` is the run's, always given: the plan's `profiles` say which
    comparisons it measures, and the family it counts (None, outside any profile, measures every one).
    Writes nothing: the chapter's save keeps the judged ones (`judged_of`)."""
    plan = the_plan()
    judged = judge_chapter(chapter, outcomes, choices, plan, profile, unmeasured)
    if set(labels) != set(judged):
        raise ValueError(f"{chapter}: labels for {sorted(labels)}, but the plan declares {sorted(judged)} "
                         "for this chapter: give each declared comparison its two labels, and no other")
    out = {}
    for cid, result in judged.items():
        if isinstance(result, str):
            out[cid] = StatedComparison(cid, None, missing=result)
            continue
        a_label, b_label, *pct = labels[cid]
        out[cid] = StatedComparison(cid, result, a_label, b_label,
                                    pct=pct[0] if pct else score_kind(result.as_dict()) in ("binary", RATE))
    return out


def judged_of(stated) -> list:
    """The judged comparisons among stated ones (a dict or list of StatedComparison), as the results
    file keeps them."""
    values = stated.values() if isinstance(stated, dict) else stated
    return [s.comparison for s in values if s.comparison is not None]


@dataclass
class Clock:
    """A chapter's clock: when it started, and the wall seconds of each stage (`stage`), which its
    results file keeps as its timings. The set-up objects carry it; it measures time, never a result."""

    started: float = field(default_factory=time.time)
    stages: dict = field(default_factory=dict)

    def stage(self, name: str):
        """Context manager that adds the wall time of a block to timings[name]."""
        clock = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.stages[name] = round(clock.stages.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _Timer()


def open_chapter(chapter: str) -> tuple[Path, Clock]:
    """A chapter's start: its run folder, resolved once and held for it (files.hold_chapter) before it
    deletes or writes anything there, and its clock, started now."""
    folder = settings.run_dir()
    hold_chapter(folder, chapter)
    return folder, Clock()


@dataclass
class ChapterRun:
    """A chapter's one recording step: `save` writes what the chapter's steps returned (Measured) with
    its judged comparisons, its parameters, its clock's timings and the provenance to the results file
    of its run folder. A chapter creates it there, in its `save`; a page without set-up (the front
    page) at its start."""

    chapter: str
    params: object
    folder: Path = field(default_factory=lambda: settings.run_dir())  # the run folder the chapter holds
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self):
        # the chapter's hold on its run folder (files.hold_chapter: the same process holds it already
        # where the chapter opened it with open_chapter)
        hold_chapter(self.folder, self.chapter)

    def save(self, measured: Measured, comparisons: list = (), extra_keys: dict | None = None, lm=None,
             extra_provenance: dict | None = None) -> Path:
        """The chapter's one recording step: what its steps measured (`measured`, Measured.merged of
        theirs), its judged comparisons (ragft.stats.Comparison, or their dicts), any named records
        beside the standard keys (the verdict chapter's ledger), written to the results file."""
        # A bad metric is reported by name, after the rest of a finished chapter is written (without it)
        rules_in = measured.metric_rules
        bad = {k: v for k, v in measured.metrics.items() if not isinstance(json_safe(v), (int, float))
               and not (v is None and "none_means" in rules_in.get(k, {}))}
        undeclared = sorted(set(measured.metrics) - set(rules_in) - set(bad))
        metrics = {k: v for k, v in measured.metrics.items() if k not in bad and k not in undeclared}
        rules = {k: r for k, r in rules_in.items() if k in metrics}
        kept = [c if isinstance(c, dict) else c.as_dict() for c in comparisons]
        twice = sorted({c["claim"] for c in kept if sum(x["claim"] == c["claim"] for x in kept) > 1})
        if twice:
            raise ValueError(f"comparisons {twice} are judged twice")
        params = as_dict(self.params)
        if the_draw() != PILOT:  # the draw its test items and plan are (ragft.declared counts a result by it)
            params["draw"] = the_draw()
        prov = provenance(params.get("seed", 0), params.get("threads", 0), self.clock.started, lm)
        prov.update(extra_provenance or {})
        doc = {
            "chapter": self.chapter,
            "profile": params.get("profile"),
            "params": params,
            "metrics": metrics,
            "metric_rules": rules,
            "outcomes": measured.outcomes,
            "outcome_tokens": measured.outcome_tokens,
            "comparisons": kept,
            "artifacts": {k: str(v) for k, v in measured.artifacts.items()},
            "tables": measured.tables,
            "timings": {"wall_s": round(time.time() - self.clock.started, 2), "stages": self.clock.stages},
            "provenance": prov,
            # the units (ragft.train.units) its trained conditions came from, by label
            "units": units.asked_since(self.clock.started),
        }
        if units.mode() == "collect":  # its trained conditions answered from placeholders: not results
            doc["placeholders"] = PLACEHOLDERS
        extra_keys = extra_keys or {}
        clash = sorted(set(extra_keys) & set(doc))
        if clash:
            raise ValueError(f"extra keys {clash} would overwrite the results file's own keys")
        doc.update(extra_keys)
        if bad or undeclared:
            doc["rejected_metrics"] = {**{k: repr(v) for k, v in bad.items()}, **{k: "no declared kind" for k in undeclared}}
        path = results_dir(self.folder) / f"{self.chapter}.json"
        write_atomically(path, json.dumps(json_safe(doc), indent=1, sort_keys=False) + "\n")
        if bad:
            raise TypeError(f"metrics must be numbers (flat name -> number); got {bad}. The rest of the results "
                            f"is saved in {path}, without them (under rejected_metrics)")
        if undeclared:
            raise TypeError(f"metrics without a declared kind (use Measured.metric): {undeclared}. The rest of "
                            f"the results is saved in {path}, without them")
        return path


def results_dir(run_dir: Path | None = None) -> Path:
    path = (run_dir or settings.run_dir()) / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


PLACEHOLDERS = ("a collecting run (RAGFT_UNITS=collect) wrote this file: its trained conditions answered from "
                "placeholders, so none of its numbers is a result")


def _not_placeholders(path: Path, doc: dict) -> dict:
    if "placeholders" in doc and units.mode() != "collect":
        raise ValueError(f"{path}: {doc['placeholders']}")
    return doc


def load_results(folder: Path) -> dict[str, dict]:
    """chapter -> results document, for every results file in a folder (a collecting run's refused)."""
    return {p.stem: _not_placeholders(p, read_json(p)) for p in sorted(Path(folder).glob("*.json"))}


def read_published(chapter: str, profile: str) -> tuple[dict, str] | None:
    """A chapter's published results for a reader who runs a later chapter alone: the profile's,
    else the cpu run's (only cpu results are published until someone runs the gpu profile on a GPU).
    Returns (results, the label that says where they came from), or None."""
    for published_profile in dict.fromkeys((profile, "cpu")):
        path = settings.PROJECT_ROOT / "experiments" / "results" / published_profile / f"{chapter}.json"
        if path.exists():
            return read_json(path), f"published {published_profile} results"
    return None


def read_chapter(chapter: str, run_dir: Path | None = None) -> dict | None:
    """Another chapter's results from this run (None when that chapter has not run here)."""
    path = results_dir(run_dir) / f"{chapter}.json"
    return _not_placeholders(path, read_json(path)) if path.exists() else None
