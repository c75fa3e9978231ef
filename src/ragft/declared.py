"""When each comparison of the analysis plan was declared in its present form, and whether results of
it had been published before: the record behind "declared before the run" (data/plan_declared.yaml).

A comparison's *form* is what decides its verdict: its plan entry without the prose (`note`, `caveat`),
the profiles that measure it (`profiles`) and, for a member of a family, the members each of those
profiles measures (one entry leaving a profile moves every other member's adjusted p), the rule its
smallest effect of interest comes from (or the effect its claim states), the fitness rules its arms
must meet, the draw it is judged on (the plan's `draw`: the knowledge-base seed and the samples that
fix the test items), and the code of the verdict and family rules (RULE_CODE: a change of their code
is a change of every comparison). The form's *first commit* is the commit from which every later
commit of the plan, the claims or the rule code gives the same form. A *published result* of the
comparison is a results file in experiments/results/ (any profile) of the same draw (its params'
`draw`; a file without one is of the pilot draw) that holds a comparison of the same id, or of the
same claim on the same two conditions (a renamed entry). The comparison was declared before any
result when no such file exists in a commit that is an ancestor of the form's first commit.

The record is built from git history by `python -m ragft.declared update` (after each commit of the
plan, the claims or the rule code, in a commit of its own) and read by chapter 7, so a copy without
history (Colab, a wheel) reads the same ledger. An entry marked as declared after a look keeps that mark forever (`merged`: a rebuild never
clears it), and the record's test (tests/test_declared.py) rebuilds it from history.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path

import yaml

from .constants import PROFILES, PROJECT_ROOT
from .files import git
from .plan import BOOK, CASE, PILOT, condition_matches, draw_of

RECORD_FILE = PROJECT_ROOT / "data" / "plan_declared.yaml"
PLAN_PATH = "data/analysis_plan.yaml"
CLAIMS_PATH = "data/claims.yaml"
DRAWS_PATH = "data/draws"  # a draw declared ahead of its publication (ragft.constants.DRAWS_DIR)
RESULTS_PATH = "experiments/results"
PROSE_FIELDS = ("note", "caveat")  # what an entry may change without changing its verdict
# the code that turns a comparison's test into its verdict and its family's adjustment: file -> functions
# ("Class.method" for a method); the form holds a hash of their code (docstrings and comments left out)
RULE_CODE = {"src/ragft/stats.py": ("decide", "holm", "_bound"),
             "src/ragft/plan.py": ("adjust", "unfit", "Plan.members", "Plan.family_size", "Plan.measured_in")}


def _entries(plan: dict) -> dict[str, dict]:
    """Every comparison of a plan file's text, the book's and the reader's case's, by id."""
    plan = plan or {}
    return {**(plan.get("comparisons") or {}), **((plan.get("case") or {}).get("comparisons") or {})}


def _code(text: str | None, names: tuple[str, ...]) -> dict[str, str]:
    """{name: a hash of that function's code} in one file's text (docstrings, comments and the function's
    own imports left out, so that prose and moved imports do not count; "absent" where the file or the
    function is not there)."""
    try:
        tree = ast.parse(text or "")
    except SyntaxError:
        return {n: "unparsed" for n in names}
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({f"{node.name}.{m.name}": m for m in node.body if isinstance(m, ast.FunctionDef)})
    out = {}
    for name in names:
        node = found.get(name)
        if node is None:
            out[name] = "absent"
            continue
        body = node.body[1:] if (node.body and isinstance(node.body[0], ast.Expr)
                                 and isinstance(getattr(node.body[0], "value", None), ast.Constant)
                                 and isinstance(node.body[0].value.value, str)) else node.body
        body = [b for b in body if not isinstance(b, (ast.Import, ast.ImportFrom))]  # where a name is imported moves no rule
        dumped = ast.dump(ast.Module(body=body, type_ignores=[])) + ast.dump(node.args)
        out[name] = hashlib.sha256(dumped.encode()).hexdigest()[:16]
    return out


def rule_code(show) -> dict[str, str]:
    """The verdict and family rules' code (RULE_CODE) as `show(path)` gives each file: {function: hash}."""
    return {f"{path}:{name}": h for path, names in RULE_CODE.items() for name, h in _code(show(path), names).items()}


def _families(plan: dict) -> dict[str, str]:
    """{comparison id: its family}: the book's comparisons, and the reader's case (chapter 8's own family)."""
    plan = plan or {}
    return {**{k: BOOK for k in plan.get("comparisons") or {}},
            **{k: CASE for k in ((plan.get("case") or {}).get("comparisons") or {})}}


def _members(entries: dict[str, dict], families: dict[str, str], family: str, profiles) -> dict[str, list[str]]:
    """{profile: the primary tested members of a family that profile measures}, for each of `profiles`."""
    same = {k: e for k, e in entries.items()
            if e.get("role") == "primary" and e.get("test") != "check" and families.get(k) == family}
    return {p: sorted(k for k, e in same.items() if not e.get("profiles") or p in e["profiles"]) for p in profiles}


def _form(cid: str, entry: dict, plan: dict, claims: dict, code: dict | None = None, entries: dict | None = None) -> str:
    """A comparison's form as one canonical string: its entry less the prose, the rule or stated effect
    its smallest effect of interest comes from, the fitness rules it names, its family's members in the
    profiles that measure it, the draw and the rule code."""
    entry = {k: v for k, v in entry.items() if k not in PROSE_FIELDS}
    if entry.get("role") == "primary" and entry.get("test") != "check" and entries is not None:
        families = _families(plan)
        entry["family_members"] = _members(entries, families, families.get(cid, BOOK), entry.get("profiles") or PROFILES)
    entry["draw"] = (plan or {}).get("draw") or PILOT
    entry["rule_code"] = code or {}
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


def draft_paths(draw: str) -> tuple[str, str]:
    """Where a draw declared ahead of its publication keeps its plan and claims (ragft.constants.DRAWS_DIR)."""
    return f"{DRAWS_PATH}/{draw}/analysis_plan.yaml", f"{DRAWS_PATH}/{draw}/claims.yaml"


def _declared_at(sha: str, root: Path, draw: str) -> tuple[dict, dict]:
    """The plan and claims of `draw` as commit `sha` held them: the plan file where it names that draw,
    else the draw's declaration ahead of its publication (data/draws/<draw>), else the plan file."""
    plan = yaml.safe_load(_show(sha, PLAN_PATH, root) or "null") or {}
    claims_path = CLAIMS_PATH
    if draw != PILOT and draw_of(plan) != draw:
        plan_draft, claims_draft = draft_paths(draw)
        draft = yaml.safe_load(_show(sha, plan_draft, root) or "null") or {}
        if draft:
            plan, claims_path = draft, claims_draft
    return plan, yaml.safe_load(_show(sha, claims_path, root) or "null") or {}


def build(root: Path = PROJECT_ROOT) -> dict[str, dict]:
    """The record from the repository's history: for each comparison of today's plan, the commit of its
    present form, the first commit with a published result of it, and whether the form came first. A
    draw declared ahead of its publication is dated from its declaration's commits (draft_paths)."""
    if not git("log", "-1", "--format=%H", "--", PLAN_PATH, root=root, check=True).stdout.strip():
        raise RuntimeError(f"{PLAN_PATH} has no commit in {root}: the record is built from git history")
    head = yaml.safe_load((root / PLAN_PATH).read_text())
    draw = draw_of(head)
    drafts = draft_paths(draw) if draw != PILOT else ()
    commits = git("log", "--reverse", "--format=%H", "--", PLAN_PATH, CLAIMS_PATH, *RULE_CODE, *drafts,
                  root=root, check=True).stdout.split()
    forms: dict[str, list[tuple[str, str | None]]] = {}
    for sha in commits:
        plan, claims = _declared_at(sha, root, draw)
        if not plan:
            continue  # before the plan's first commit
        code = rule_code(lambda path: _show(sha, path, root))
        entries = _entries(plan)
        for cid, entry in entries.items():
            forms.setdefault(cid, []).append((sha, _form(cid, entry, plan, claims, code, entries)))
        for cid in forms.keys() - entries.keys():  # removed at this commit
            forms[cid].append((sha, None))
    now = _entries(head)
    first_result = _first_results(root, now, draw)
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
        record[cid] = {"draw": draw_of(head), "declared_in": since[:12], "first_declared_in": history[0][0][:12],
                       "first_result_in": seen[:12] if seen else None, "declared_before_any_result": before}
    return record


def _first_results(root: Path, now: dict[str, dict], draw: str = PILOT) -> dict[str, str]:
    """{comparison id: the oldest commit whose results files of `draw` hold a result of it}."""
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
            if not isinstance(doc, dict) or str((doc.get("params") or {}).get("draw") or PILOT) != draw:
                continue  # another draw's test items: not a look at this draw's
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
# whether its present form came before any result (declared_before_any_result), on the draw the plan
# judges it on (draw). Built from git history by `python -m ragft.declared update` (ragft.declared says
# what counts as the form and as a result); never edited by hand. An entry declared after a look keeps
# that mark: a rebuild never clears it; a draw the plan has left keeps its lines under earlier_draws.
"""


def merged(old: dict[str, dict], new: dict[str, dict]) -> dict[str, dict]:
    """The rebuilt record with every mark of the old one kept: a comparison the old record marks as
    declared after a look stays so marked (and keeps its line once removed from the plan). A mark is
    of its draw: an old line of another draw than the new record's is left to `earlier_draws`."""
    draw = next((r.get("draw", PILOT) for r in new.values()), None)
    out = dict(new)
    for cid, rec in old.items():
        if draw is not None and rec.get("draw", PILOT) != draw:
            continue
        if rec.get("declared_before_any_result") is False and (new.get(cid) or {}).get("declared_before_any_result") is not False:
            out[cid] = {**(new.get(cid) or {**rec, "removed_from_plan": True}), "declared_before_any_result": False}
    return out


def earlier_draws(old_file: dict, new: dict[str, dict]) -> dict[str, dict]:
    """{draw: {comparison id: its line}}: every line of a draw the plan no longer judges on, kept as it
    was when the plan moved to a fresh draw (a pilot's record is never rewritten or dropped)."""
    draw = next((r.get("draw", PILOT) for r in new.values()), None)
    out = {d: dict(lines) for d, lines in (old_file.get("earlier_draws") or {}).items()}
    for cid, rec in (old_file.get("comparisons") or {}).items():
        if draw is not None and rec.get("draw", PILOT) != draw:
            out.setdefault(rec.get("draw", PILOT), {}).setdefault(cid, {**rec, "draw": rec.get("draw", PILOT)})
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m ragft.declared update|check`: rebuild the record from history and write it (update),
    or say whether the committed one matches history (check, exit 1 if not)."""
    args = (argv if argv is not None else sys.argv[1:]) or ["check"]
    if args[0] not in ("update", "check"):
        print(main.__doc__)
        return 2
    old_file = (yaml.safe_load(RECORD_FILE.read_text()) or {}) if RECORD_FILE.exists() else {}
    old = old_file.get("comparisons") or {}
    new = merged(old, build())
    earlier = earlier_draws(old_file, new)
    before = sum(r["declared_before_any_result"] for r in new.values())
    if args[0] == "check":
        if old != new or earlier != (old_file.get("earlier_draws") or {}):
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            print(f"{RECORD_FILE.name} differs from history for {changed}: run `python -m ragft.declared update`")
            return 1
        print(f"{RECORD_FILE.name}: {len(new)} comparisons, {before} declared before any result")
        return 0
    RECORD_FILE.write_text(HEADER + yaml.safe_dump({"comparisons": new, **({"earlier_draws": earlier} if earlier else {})},
                                                   sort_keys=False))
    print(f"{RECORD_FILE}: {len(new)} comparisons, {before} declared before any result")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
