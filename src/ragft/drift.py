"""The drift check: a run's metrics against the committed results, by rules each metric declares.

  python -m ragft.drift --profile cpu --run _build/run/cpu            # check; exit 1 on drift
  python -m ragft.drift --profile cpu --run _build/run/cpu --accept   # rewrite the committed files

Each chapter declares what every metric is (ragft.results.METRIC_KINDS, in the results file's
`metric_rules`); the kind and n decide the comparison, never the metric's name:

  rate, mean   may move by a few answers: max(FLIPS, SHARE x n) questions out of n. Every x86 CPU
               computes with the same AVX2 kernels (ragft.settings.CPU_KERNELS), but another library
               build or CPU family may round differently and flip near-tie answers; a real change
               moves more than that. A run with other kernels than the published one is named.
  derived      by the tolerance the chapter states for it
  exact        must match (deterministic arithmetic)
  choice, machine   not compared (an argmax over near ties; a measurement of the machine)

Only the committed file defines the rules: a run that declares a metric otherwise (another kind, n
or tolerance) drifts on that metric, and a malformed rule in either file is a ResultsError naming the
file and the metric. A value that is not a finite number (NaN, infinity) is drift.
A metric in the committed file missing from the run is drift; a new one is reported, not failed.
Beyond the headline metrics: every committed comparison must be in the run with the same verdict,
and the per-question outcomes of every condition a question-level comparison reads may differ in at
most as many questions as a rate over them may move (FLIPS, SHARE); outcomes that are measurements
of the machine (timings) are not compared.
Accepting refuses a dirty tree, results that are not this book's chapter results, and results that
do not name a clean commit of this repository's history.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from .constants import PROJECT_ROOT
from .files import git
from .results import METRIC_KINDS
from .run import toc_chapters

FLIPS = 2  # answers that may flip between machines, at the least
SHARE = 0.05  # ... or this share of the questions, when that is more
EXACT_REL = 1e-9


class ResultsError(ValueError):
    """A results file that cannot be checked or accepted; the message names the file."""


def rate_tolerance(n: int) -> float:
    """How far a rate (or a mean of scores in [0, 1]) over n questions may move between machines."""
    return max(FLIPS, math.ceil(SHARE * n)) / n


def tolerance(rule: dict) -> float | None:
    """The absolute tolerance a declared rule allows; None: not compared; 0.0: exact."""
    kind = rule.get("kind")
    if kind in ("rate", "mean"):
        return rate_tolerance(rule["n"])
    if kind == "derived":
        return float(rule["tol"])
    if kind == "exact":
        return 0.0
    return None


def rule_problem(rule) -> str | None:
    """What is wrong with a declared rule, or None: a known kind; rate and mean with a whole number
    n >= 1; derived with a finite tolerance >= 0."""
    if not isinstance(rule, dict) or rule.get("kind") not in METRIC_KINDS:
        return f"its rule {rule!r} has no kind of {sorted(METRIC_KINDS)}"
    kind = rule["kind"]
    if kind in ("rate", "mean"):
        n = rule.get("n")
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            return f"a {kind} rule needs n, a whole number >= 1; got {n!r}"
    if kind == "derived":
        tol = rule.get("tol")
        if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol) and tol >= 0):
            return f"a derived rule needs tol, a finite number >= 0; got {tol!r}"
    return None


def _finite(v) -> bool:
    return v is None or math.isfinite(v)


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def read_results(path: Path, chapter: str | None = None) -> dict:
    """A results file, validated: JSON with numeric metrics and a rule for each; errors name the file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a readable results file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise ResultsError(f"{path}: not a chapter results file (no `metrics` mapping)")
    if chapter is not None and doc.get("chapter") != chapter:
        raise ResultsError(f"{path}: holds chapter {doc.get('chapter')!r}, expected {chapter!r}")
    if "placeholders" in doc:  # ragft.results marks a collecting run's file: never checked, never accepted
        raise ResultsError(f"{path}: {doc['placeholders']}")
    bad = {k: v for k, v in doc["metrics"].items() if not _is_number(v)}
    if bad:
        raise ResultsError(f"{path}: metrics must be numbers; got {bad}")
    rules = doc.get("metric_rules", {})
    if not isinstance(rules, dict):
        raise ResultsError(f"{path}: metric_rules must map names to {{'kind': one of {sorted(METRIC_KINDS)}, ...}}")
    for key, rule in rules.items():
        problem = rule_problem(rule)
        if problem:
            raise ResultsError(f"{path}: metric_rules[{key!r}]: {problem}")
    return doc


def compare(committed: dict, run: dict, rules: dict, run_rules: dict | None = None) -> tuple[list[str], list[str]]:
    """(drifts, notes) for one chapter's metrics, each compared by the committed file's rule
    (`rules`); `run_rules`, the run's declarations, only ever add drift (a changed rule)."""
    drifts, notes = [], []
    for key, old in committed.items():
        rule = rules.get(key)
        if rule is None:
            drifts.append(f"{key}: no declared kind, so it cannot be compared (declare it with Measured.metric)")
            continue
        if run_rules is not None and key in run_rules and run_rules[key] != rule:
            drifts.append(f"{key}: its rule changed from {rule} to {run_rules[key]} (a rule is the committed file's)")
            continue
        tol = tolerance(rule)
        if tol is None:
            continue
        if key not in run:
            drifts.append(f"{key}: in the committed results, missing from the run")
            continue
        new = run[key]
        if not (_finite(old) and _finite(new)):
            drifts.append(f"{key}: {old} -> {new} (not a finite number)")
        elif old is None or new is None:
            if old != new:
                drifts.append(f"{key}: {old} -> {new}")
        elif tol == 0.0:
            if abs(new - old) > EXACT_REL * max(1.0, abs(old)):
                drifts.append(f"{key}: {old} -> {new} (must match exactly)")
        elif abs(new - old) > tol + 1e-12:
            drifts.append(f"{key}: {old:.4g} -> {new:.4g} ({rule['kind']}, tolerance {tol:.3g})")
    notes += [f"{key}: new metric {run[key]}" for key in run if key not in committed]
    return drifts, notes


def compare_evidence(committed: dict, run: dict) -> list[str]:
    """Drift in what the verdicts rest on: every committed comparison present in the run with the
    same verdict, and the per-question outcomes of the conditions that question-level comparisons
    read differing in no more questions than a rate over them may move (timed conditions, in
    comparisons of measurements, are the machine's and not compared)."""
    drifts = []
    for where, doc in (("committed results", committed), ("run", run)):  # one id, one comparison: a second copy
        ids = [c.get("claim") for c in doc.get("comparisons") or []]  # would hide the first from this check
        drifts += [f"comparison {cid}: {ids.count(cid)} copies in the {where} (an id names one comparison)"
                   for cid in sorted({i for i in ids if ids.count(i) > 1}, key=str)]
    runs = {c.get("claim"): c for c in run.get("comparisons") or []}
    read = set()
    for c in committed.get("comparisons") or []:
        claim = c.get("claim")
        mine = runs.get(claim)
        if mine is None:
            drifts.append(f"comparison {claim}: in the committed results, missing from the run")
            continue
        if c.get("kind") not in ("binary", "continuous") or measures_the_machine(c):
            continue  # figures rebuilt by arithmetic are checked as metrics; timings are the machine's
        if mine.get("verdict") != c.get("verdict"):
            drifts.append(f"comparison {claim}: verdict {c.get('verdict')!r} -> {mine.get('verdict')!r}")
        if c.get("kind") == "binary":
            read |= {c.get("a"), c.get("b")}
    was, now = committed.get("outcomes") or {}, run.get("outcomes") or {}
    for condition in sorted(x for x in read if x in was):
        if condition not in now:
            drifts.append(f"outcomes of {condition!r}: in the committed results, missing from the run")
            continue
        old, new = was[condition], now[condition]
        questions = set(old) | set(new)
        changed = sum(1 for q in questions if q not in old or q not in new or not _same(old[q], new[q]))
        allowed = max(FLIPS, math.ceil(SHARE * len(questions)))
        if changed > allowed:
            drifts.append(f"outcomes of {condition!r}: {changed} of {len(questions)} questions changed "
                          f"(at most {allowed} may, as near ties on another machine)")
    return drifts


def compare_units(committed: dict, run: dict) -> list[str]:
    """Drift in where the trained conditions came from: every unit the committed results name
    (ragft.train.units, by label) named by the run with the same key. A key that moved is another
    training run (its records, hyperparameters, base weights, versions or the units' format)."""
    was, now = committed.get("units") or {}, run.get("units") or {}
    drifts = []
    for label, unit in sorted(was.items()):
        mine = now.get(label)
        if mine is None:
            drifts.append(f"unit {label}: named by the committed results ({unit.get('key')}), not asked for by the run")
        elif mine.get("key") != unit.get("key"):
            drifts.append(f"unit {label}: key {unit.get('key')} -> {mine.get('key')} (another training run)")
    return drifts


def measures_the_machine(comparison: dict) -> bool:
    """A comparison of timings (first tokens, answers, seconds to fresh): its verdict may move with the
    host, as a `machine` metric does."""
    unit, a = str(comparison.get("unit") or ""), str(comparison.get("a") or "")
    return unit.startswith("timed") or a.startswith("seconds")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return a == b


def _folder(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(Path(folder).glob("*.json"))}


def check(profile: str, run_dir: Path, committed_dir: Path | None = None) -> list[str]:
    committed_dir = committed_dir or PROJECT_ROOT / "experiments" / "results" / profile
    old, new = _folder(committed_dir), _folder(Path(run_dir) / "results")
    problems = []
    for chapter in sorted(set(old) | set(new)):
        if chapter not in new:
            problems.append(f"{chapter}: committed, but the run wrote no results")
            continue
        if chapter not in old:
            print(f"{chapter}: no committed results yet (accept them with `make accept`)")
            continue
        try:
            was, now = read_results(old[chapter]), read_results(new[chapter])
        except ResultsError as e:
            problems.append(str(e))
            continue
        # the committed file defines every rule; the run's may only differ by being drift
        drifts, notes = compare(was["metrics"], now["metrics"], was.get("metric_rules", {}), now.get("metric_rules", {}))
        drifts += compare_evidence(was, now) + compare_units(was, now)
        kernels = [(doc.get("provenance") or {}).get("cpu_kernels") for doc in (was, now)]
        if None not in kernels and kernels[0] != kernels[1]:  # the likely cause of any drift above
            notes.append(f"computed with PyTorch's {kernels[1]} CPU kernels, published with {kernels[0]} "
                         "(ragft.settings.CPU_KERNELS)")
        problems += [f"{chapter}: {d}" for d in drifts]
        for n in notes:
            print(f"{chapter}: {n}")
    return problems


def accept(profile: str, run_dir: Path, target: Path | None = None, chapters: list[str] | None = None) -> list[Path]:
    """Copy a run's results over the committed ones, after checking that each is a results file of a
    book chapter in this profile, run from a clean commit of this repository's history, and that the
    tree is clean now (the accepted files then say exactly what produced them)."""

    status = git("status", "--porcelain", "--untracked-files=no")
    if status.returncode != 0:
        raise ResultsError(f"git status failed ({status.stderr.strip()}): cannot tell whether the tree is clean")
    if status.stdout.strip():
        raise ResultsError("the working tree has uncommitted changes: commit them, rerun, then accept, "
                           "so the published results name the commit that produced them")
    chapters = chapters if chapters is not None else toc_chapters()
    sources = _folder(Path(run_dir) / "results")
    if not sources:
        raise ResultsError(f"{run_dir}/results holds no results files")
    for chapter, src in sources.items():
        if chapter not in chapters:
            raise ResultsError(f"{src}: not a chapter of the book (chapters: {chapters})")
        doc = read_results(src, chapter)
        if doc.get("profile") != profile:
            raise ResultsError(f"{src}: profile {doc.get('profile')!r}, expected {profile!r}")
        prov = doc.get("provenance") or {}
        sha = prov.get("git_sha")
        if prov.get("git_dirty") is not False or not sha:
            raise ResultsError(f"{src}: ran from a tree with uncommitted changes (or outside git); rerun from a clean commit")
        if git("merge-base", "--is-ancestor", sha, "HEAD").returncode != 0:
            raise ResultsError(f"{src}: ran from commit {sha[:12]}, which is not in this branch's history")
    target = target or PROJECT_ROOT / "experiments" / "results" / profile
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter, src in sources.items():
        shutil.copyfile(src, target / src.name)
        written.append(target / src.name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragft.drift", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=["smoke", "cpu", "gpu"])
    ap.add_argument("--run", required=True, type=Path, help="the run folder (holds results/)")
    ap.add_argument("--accept", action="store_true", help="copy the run's results over the committed ones")
    args = ap.parse_args(argv)
    if not (args.run / "results").is_dir():
        print(f"no results in {args.run}: run `python -m ragft.run --profile {args.profile}` first", file=sys.stderr)
        return 2
    if args.accept:
        try:
            written = accept(args.profile, args.run)
        except ResultsError as e:
            print(f"not accepted: {e}", file=sys.stderr)
            return 1
        for path in written:
            print(f"accepted {path.relative_to(PROJECT_ROOT)}")
        return 0
    problems = check(args.profile, args.run)
    for p in problems:
        print(f"DRIFT {p}")
    print(json.dumps({"profile": args.profile, "drifts": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
