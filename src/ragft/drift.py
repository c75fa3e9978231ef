"""The drift check: a run's metrics against the committed results, with the tolerances in one place.

  python -m ragft.drift --profile cpu --run _build/run/cpu            # check; exit 1 on drift
  python -m ragft.drift --profile cpu --run _build/run/cpu --accept   # rewrite the committed files

Metrics are compared key by key. The first rule whose pattern matches a key decides:
"skip" (wall-clock timings: they measure the machine, not the method), "exact" (deterministic
arithmetic: token counts, costs, sizes), or an absolute tolerance (accuracies, in [0, 1]).
A key in the committed file missing from the run is drift too; a new key is reported, not failed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from .results import load_results
from .settings import PROJECT_ROOT

# (pattern, rule): first match wins. Accuracies get 3 points: runs here are deterministic, and the
# slack absorbs BLAS differences between CPUs; anything larger is a real change.
TOLERANCES: list[tuple[str, str | float]] = [
    (r"(_s|_ms|_seconds|per_s|_gflops|_mfu|wall.*)$", "skip"),
    # also machine measurements named otherwise: latencies by index size or per query, shares and
    # ratios of two timings or two memory peaks, and resident memory itself
    (r"_ms_|_share_of_|step_ratio|peak_ratio|peak_mb|growth_mb", "skip"),
    # a saved adapter folder holds peft's config and model card, which name the base model's folder:
    # another cache path changes the size by bytes, so sizes on disk get 0.01 MB
    (r"artifact_mb", 0.01),
    (r"(tokens|cost|price|params|bytes|_mb|count|^n_)", "exact"),
    (r".*", 0.03),
]


def rule_for(key: str) -> str | float:
    for pattern, rule in TOLERANCES:
        if re.search(pattern, key):
            return rule
    raise AssertionError("the last rule matches everything")


def compare(committed: dict, run: dict) -> tuple[list[str], list[str]]:
    """(drifts, notes) for one chapter's metrics."""
    drifts, notes = [], []
    for key, old in committed.items():
        rule = rule_for(key)
        if rule == "skip":
            continue
        if key not in run:
            drifts.append(f"{key}: in the committed results, missing from the run")
            continue
        new = run[key]
        if old is None or new is None:
            if old != new:
                drifts.append(f"{key}: {old} -> {new}")
        elif rule == "exact":
            if abs(new - old) > 1e-9 * max(1.0, abs(old)):
                drifts.append(f"{key}: {old} -> {new} (must match exactly)")
        elif abs(new - old) > rule:
            drifts.append(f"{key}: {old:.4g} -> {new:.4g} (tolerance {rule})")
    notes += [f"{key}: new metric {run[key]}" for key in run if key not in committed]
    return drifts, notes


def check(profile: str, run_dir: Path, committed_dir: Path | None = None) -> list[str]:
    committed_dir = committed_dir or PROJECT_ROOT / "experiments" / "results" / profile
    old, new = load_results(committed_dir), load_results(Path(run_dir) / "results")
    problems = []
    for chapter in sorted(set(old) | set(new)):
        if chapter not in new:
            problems.append(f"{chapter}: committed, but the run wrote no results")
            continue
        if chapter not in old:
            print(f"{chapter}: no committed results yet (accept them with `make accept`)")
            continue
        drifts, notes = compare(old[chapter]["metrics"], new[chapter]["metrics"])
        problems += [f"{chapter}: {d}" for d in drifts]
        for n in notes:
            print(f"{chapter}: {n}")
    return problems


def accept(profile: str, run_dir: Path) -> list[Path]:
    target = PROJECT_ROOT / "experiments" / "results" / profile
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted((Path(run_dir) / "results").glob("*.json")):
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
        for path in accept(args.profile, args.run):
            print(f"accepted {path.relative_to(PROJECT_ROOT)}")
        return 0
    problems = check(args.profile, args.run)
    for p in problems:
        print(f"DRIFT {p}")
    print(json.dumps({"profile": args.profile, "drifts": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
