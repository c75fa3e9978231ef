"""When each comparison of the analysis plan was declared in its present form, and whether results of
it had been published before: the record behind "declared before the run" (data/plan_declared.yaml).

A comparison's *form* is what decides its verdict: its plan entry without the prose (`note`, `caveat`) and the
profiles that measure it, the rule its smallest effect of interest comes from (or the effect its claim
states), and the fitness rules its arms must meet. The form's *first commit* is the plan commit from
which every later plan commit gives the same form. A *published result* of the comparison is a results
file in experiments/results/ (any profile) that holds a comparison of the same id, or of the same
claim on the same two conditions (a renamed entry). The comparison was declared before any result when
no such file exists in a commit that is an ancestor of the form's first commit.

The record is built from git history by `python -m ragft.declared update` (after each plan commit, in
a commit of its own) and read by chapter 7, so a copy without history (Colab, a wheel) reads the same
ledger. An entry marked as declared after a look keeps that mark forever (`merged`: a rebuild never
clears it), and the record's test (tests/test_declared.py) rebuilds it from history.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import yaml

from .constants import PROJECT_ROOT
from .files import git
from .plan import condition_matches

RECORD_FILE = PROJECT_ROOT / "data" / "plan_declared.yaml"
PLAN_PATH = "data/analysis_plan.yaml"
CLAIMS_PATH = "data/claims.yaml"
RESULTS_PATH = "experiments/results"
PROSE_FIELDS = ("note", "caveat", "profiles")  # what an entry may change without changing its verdict


def _entries(plan: dict) -> dict[str, dict]:
    """Every comparison of a plan file's text, the book's and the reader's case's, by id."""
    plan = plan or {}
    return {**(plan.get("comparisons") or {}), **((plan.get("case") or {}).get("comparisons") or {})}


def _form(cid: str, entry: dict, plan: dict, claims: dict) -> str:
    """A comparison's form as one canonical string: its entry less the prose, the rule or stated effect
    its smallest effect of interest comes from, the fitness rules it names."""
    entry = {k: v for k, v in entry.items() if k not in PROSE_FIELDS}
    source = entry.get("sesoi_from")
    if source == "stated":
        stated = next((c.get("effects", {}).get(cid) for c in (claims or {}).values()
                       if isinstance(c, dict) and cid in (c.get("effects") or {})), None)
        entry["sesoi_from"] = {"stated": stated}
    else:
        entry["sesoi_from"] = {source: ((plan.get("rules") or {}).get(source) or {}).get("sesoi")}
    entry["fitness"] = {name: {k: v for k, v in ((plan.get("fitness") or {}).get(name) or {}).items() if k != "why"}
                        for name in entry.get("fitness") or ()}
    entry["family"] = {k: v for k, v in (plan.get("family") or {}).items() if k != "name"}
    return json.dumps(entry, sort_keys=True, default=str)


def _show(commit: str, path: str, root: Path) -> str | None:
    out = git("show", f"{commit}:{path}", root=root)
    if out.returncode == 127:  # git could not run: not the same as a file the commit lacks
        raise RuntimeError(f"git show {commit}:{path} could not run in {root}: {out.stderr.strip()}")
    return out.stdout if out.returncode == 0 else None


def build(root: Path = PROJECT_ROOT) -> dict[str, dict]:
    """The record from the repository's history: for each comparison of today's plan, the commit of its
    present form, the first commit with a published result of it, and whether the form came first."""
    plan_commits = git("log", "--reverse", "--format=%H", "--", PLAN_PATH, root=root, check=True).stdout.split()
    if not plan_commits:
        raise RuntimeError(f"{PLAN_PATH} has no commit in {root}: the record is built from git history")
    forms: dict[str, list[tuple[str, str | None]]] = {}
    for sha in plan_commits:
        plan = yaml.safe_load(_show(sha, PLAN_PATH, root) or "null") or {}
        claims = yaml.safe_load(_show(sha, CLAIMS_PATH, root) or "null") or {}
        entries = _entries(plan)
        for cid, entry in entries.items():
            forms.setdefault(cid, []).append((sha, _form(cid, entry, plan, claims)))
        for cid in forms.keys() - entries.keys():  # removed at this commit
            forms[cid].append((sha, None))
    head = yaml.safe_load((root / PLAN_PATH).read_text())
    now = _entries(head)
    first_result = _first_results(root, now)
    record = {}
    for cid in now:
        history = forms.get(cid, [])
        if not history or history[-1][1] is None:
            raise RuntimeError(f"{cid}: today's plan entry is not committed; commit {PLAN_PATH} first")
        present = history[-1][1]
        since = history[-1][0]
        for sha, form in reversed(history):
            if form != present:
                break
            since = sha
        seen = first_result.get(cid)
        before = seen is None or not _is_ancestor(seen, since, root)
        record[cid] = {"declared_in": since[:12], "first_declared_in": history[0][0][:12],
                       "first_result_in": seen[:12] if seen else None, "declared_before_any_result": before}
    return record


def _first_results(root: Path, now: dict[str, dict]) -> dict[str, str]:
    """{comparison id: the oldest commit whose results files hold a result of it}."""
    out: dict[str, str] = {}
    commits = git("log", "--reverse", "--format=%H", "--", RESULTS_PATH, root=root, check=True).stdout.split()
    by_claim: dict[str, list[str]] = {}  # a renamed entry is looked for among its claim's comparisons
    for cid in now:
        by_claim.setdefault(cid.split("-", 1)[0], []).append(cid)
    for sha in commits:
        listed = git("ls-tree", "-r", "--name-only", sha, "--", RESULTS_PATH, root=root, check=True).stdout
        files = [f for f in listed.split() if f.endswith(".json")]
        for path in files:
            try:
                doc = json.loads(_show(sha, path, root) or "{}")
            except json.JSONDecodeError:
                continue
            for c in doc.get("comparisons") or [] if isinstance(doc, dict) else []:
                found = str(c.get("claim", ""))
                if found in now:
                    out.setdefault(found, sha)
                if not (isinstance(c.get("a"), str) and isinstance(c.get("b"), str)):
                    continue
                for cid in by_claim.get(found.split("-", 1)[0], ()):
                    entry = now[cid]
                    if cid not in out and condition_matches(entry["a"], c["a"]) and condition_matches(entry["b"], c["b"]):
                        out[cid] = sha
    return out


def _is_ancestor(older: str, newer: str, root: Path) -> bool:
    out = git("merge-base", "--is-ancestor", older, newer, root=root)
    if out.returncode not in (0, 1):  # 1: not an ancestor; anything else: git could not answer
        raise RuntimeError(f"git merge-base --is-ancestor {older} {newer} failed in {root}: {out.stderr.strip()}")
    return out.returncode == 0


@lru_cache(maxsize=1)
def record() -> dict[str, dict]:
    """The committed record ({comparison id: declared_in, first_declared_in, first_result_in,
    declared_before_any_result}); a comparison it does not hold is refused by `of`."""
    raw = yaml.safe_load(RECORD_FILE.read_text()) or {}
    return raw.get("comparisons") or {}


def of(comparison_id: str) -> dict:
    """One comparison's record, or a clear error naming the command that rebuilds it."""
    rec = record()
    if comparison_id not in rec:
        raise KeyError(f"{comparison_id}: not in {RECORD_FILE.name}; after committing the plan run "
                       "`python -m ragft.declared update` and commit the record")
    return rec[comparison_id]


HEADER = """\
# When each comparison of data/analysis_plan.yaml was declared in its present form (declared_in), when
# it was first declared at all, the first commit with a published result of it (first_result_in), and
# whether its present form came before any result (declared_before_any_result). Built from git history
# by `python -m ragft.declared update` (ragft.declared says what counts as the form and as a result);
# never edited by hand. An entry declared after a look keeps that mark: a rebuild never clears it.
"""


def merged(old: dict[str, dict], new: dict[str, dict]) -> dict[str, dict]:
    """The rebuilt record with every mark of the old one kept: a comparison the old record marks as
    declared after a look stays so marked (and keeps its line once removed from the plan)."""
    out = dict(new)
    for cid, rec in old.items():
        if rec.get("declared_before_any_result") is False and (new.get(cid) or {}).get("declared_before_any_result") is not False:
            out[cid] = {**(new.get(cid) or {**rec, "removed_from_plan": True}), "declared_before_any_result": False}
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m ragft.declared update|check`: rebuild the record from history and write it (update),
    or say whether the committed one matches history (check, exit 1 if not)."""
    args = (argv if argv is not None else sys.argv[1:]) or ["check"]
    if args[0] not in ("update", "check"):
        print(main.__doc__)
        return 2
    old = (yaml.safe_load(RECORD_FILE.read_text()) or {}).get("comparisons", {}) if RECORD_FILE.exists() else {}
    new = merged(old, build())
    before = sum(r["declared_before_any_result"] for r in new.values())
    if args[0] == "check":
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            print(f"{RECORD_FILE.name} differs from history for {changed}: run `python -m ragft.declared update`")
            return 1
        print(f"{RECORD_FILE.name}: {len(new)} comparisons, {before} declared before any result")
        return 0
    RECORD_FILE.write_text(HEADER + yaml.safe_dump({"comparisons": new}, sort_keys=False))
    print(f"{RECORD_FILE}: {len(new)} comparisons, {before} declared before any result")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
