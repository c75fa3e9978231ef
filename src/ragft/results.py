"""Results files with provenance (ragft.host measures the host); ragft.prose puts their numbers in the
chapters' prose.

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
  and any named sections a chapter adds (the verdict chapter's `ledger`).
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
from .jsonl import json_safe
from .plan import judge, judge_chapter, the_plan
from .prose import StatedComparison

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
class ChapterRun:
    """Collects a chapter's metrics (with their kinds), per-question outcomes, comparisons, tables and
    stage timings; `save` writes the results file."""

    chapter: str
    params: object
    started: float = field(default_factory=time.time)
    folder: Path = field(default_factory=lambda: settings.run_dir())  # the run folder, resolved once at the chapter's start
    metrics: dict = field(default_factory=dict)
    metric_rules: dict = field(default_factory=dict)
    outcomes: dict = field(default_factory=dict)
    outcome_tokens: dict = field(default_factory=dict)
    comparisons: list = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)  # named records beside the standard keys (the ledger)

    def __post_init__(self):
        # the chapter's hold on its run folder, before it deletes or writes anything there (files.hold_chapter)
        hold_chapter(self.folder, self.chapter)

    def metric(self, key: str, value, kind: str, n: int | None = None, tol: float | None = None,
               none_means: str | None = None):
        """Record a headline metric with its kind (METRIC_KINDS); rates and means need their n,
        derived metrics their tolerance; a metric that may be None says what None means (a crossover
        that never happens). Returns the value."""
        if kind not in METRIC_KINDS:
            raise ValueError(f"metric {key}: kind={kind!r} is not allowed: use one of {sorted(METRIC_KINDS)}")
        if kind in ("rate", "mean") and not (isinstance(n, int) and n >= 1):
            raise ValueError(f"metric {key}: a {kind} needs the number of questions behind it (n >= 1), got {n!r}")
        if kind == "derived" and not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"metric {key}: a derived metric needs its tolerance (tol >= 0), got {tol!r}")
        if value is None and none_means is None:
            raise ValueError(f"metric {key}: None is a number only where the metric says what it means (none_means)")
        self.metrics[key] = value
        self.metric_rules[key] = {"kind": kind, **({"n": n} if n is not None else {}),
                                  **({"tol": tol} if tol is not None else {}),
                                  **({"none_means": none_means} if none_means is not None else {})}
        return value

    def record(self, condition: str, scores: dict, tokens: dict | None = None) -> None:
        """Keep a condition's per-question outcomes: {question id: score} (1/0 for right/wrong, or a
        continuous score), and optionally {question id: (prompt tokens, completion tokens)}."""
        if not scores:
            raise ValueError(f"condition {condition!r}: no outcomes to record")
        if len({str(q) for q in scores}) != len(scores):
            raise ValueError(f"condition {condition!r}: question ids are not unique as strings")
        self.outcomes[condition] = {str(q): float(v) for q, v in scores.items()}
        if tokens is not None:
            self.outcome_tokens[condition] = {str(q): [int(p), int(c)] for q, (p, c) in tokens.items()}

    def compare(self, comparison_id: str, a: str | None = None, b: str | None = None):
        """The declared comparison `comparison_id` of data/analysis_plan.yaml on two recorded conditions
        (the plan's names; `a` and `b` give the values of its placeholders), judged by the plan's
        engine (ragft.plan.judge) and kept for the results file; returns it so the prose can glue
        its sentence. Its test, direction, margin and bounds are the plan's, never the chapter's."""
        return self._keep(judge(comparison_id, self.outcomes, a, b, profile=getattr(self.params, "profile", None)))

    def _keep(self, result):
        """Keep a judged comparison for the results file, in place of an earlier one of the same id."""
        self.comparisons = [c for c in self.comparisons if c["claim"] != result.claim] + [result.as_dict()]
        return result

    def compare_chapter(self, labels: dict[str, tuple], choices: dict | None = None,
                        unmeasured: dict[str, str] | None = None) -> dict[str, "StatedComparison"]:
        """Every comparison the plan declares for this chapter (ragft.plan.judge_chapter, with the run's
        `choices` for the plan's placeholders and the chapter's reasons for the arms its parameters
        leave out, `unmeasured`), judged on the recorded outcomes and kept for the results file, each
        with the labels its sentence gives its two arms (`labels`: {comparison id: (a label, b label)},
        one for each declared comparison). A difference of two rates reads in points (the plan's kind
        "binary"), any other as a number, unless its labels carry a third item, True for points: a
        continuous score on a 0-1 scale (a share of fields right) also reads in points."""
        plan = the_plan()
        judged = judge_chapter(self.chapter, self.outcomes, choices, plan, getattr(self.params, "profile", None),
                               unmeasured)
        if set(labels) != set(judged):
            raise ValueError(f"{self.chapter}: labels for {sorted(labels)}, but the plan declares {sorted(judged)} "
                             "for this chapter: give each declared comparison its two labels, and no other")
        out = {}
        for cid, result in judged.items():
            if isinstance(result, str):
                out[cid] = StatedComparison(cid, None, missing=result)
                continue
            a_label, b_label, *pct = labels[cid]
            out[cid] = StatedComparison(cid, self._keep(result), a_label, b_label,
                                        pct=pct[0] if pct else plan.get(cid).kind == "binary")
        return out

    def stage(self, name: str):
        """Context manager that adds the wall time of a block to timings[name]."""
        run = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                run.stages[name] = round(run.stages.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _Timer()

    def save(self, lm=None, extra_provenance: dict | None = None) -> Path:
        # A bad metric is reported by name, after the rest of a finished chapter is written (without it)
        bad = {k: v for k, v in self.metrics.items() if not isinstance(json_safe(v), (int, float))
               and not (v is None and "none_means" in self.metric_rules.get(k, {}))}
        undeclared = sorted(set(self.metrics) - set(self.metric_rules) - set(bad))
        metrics = {k: v for k, v in self.metrics.items() if k not in bad and k not in undeclared}
        rules = {k: r for k, r in self.metric_rules.items() if k in metrics}
        params = as_dict(self.params)
        prov = provenance(params.get("seed", 0), params.get("threads", 0), self.started, lm)
        prov.update(extra_provenance or {})
        doc = {
            "chapter": self.chapter,
            "profile": params.get("profile"),
            "params": params,
            "metrics": metrics,
            "metric_rules": rules,
            "outcomes": self.outcomes,
            "outcome_tokens": self.outcome_tokens,
            "comparisons": self.comparisons,
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
            "tables": self.tables,
            "timings": {"wall_s": round(time.time() - self.started, 2), "stages": self.stages},
            "provenance": prov,
        }
        clash = sorted(set(self.sections) & set(doc))
        if clash:
            raise ValueError(f"sections {clash} would overwrite the results file's own keys")
        doc.update(self.sections)
        if bad or undeclared:
            doc["rejected_metrics"] = {**{k: repr(v) for k, v in bad.items()}, **{k: "no declared kind" for k in undeclared}}
        path = results_dir(self.folder) / f"{self.chapter}.json"
        write_atomically(path, json.dumps(json_safe(doc), indent=1, sort_keys=False) + "\n")
        if bad:
            raise TypeError(f"metrics must be numbers (flat name -> number); got {bad}. The rest of the results "
                            f"is saved in {path}, without them (under rejected_metrics)")
        if undeclared:
            raise TypeError(f"metrics without a declared kind (use ChapterRun.metric): {undeclared}. The rest of "
                            f"the results is saved in {path}, without them")
        return path


def results_dir(run_dir: Path | None = None) -> Path:
    path = (run_dir or settings.run_dir()) / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_results(folder: Path) -> dict[str, dict]:
    """chapter -> results document, for every results file in a folder."""
    return {p.stem: read_json(p) for p in sorted(Path(folder).glob("*.json"))}


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
    return read_json(path) if path.exists() else None
