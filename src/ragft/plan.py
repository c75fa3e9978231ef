"""The analysis plan (data/analysis_plan.yaml): every comparison that can carry a verdict, declared
before the run, and the one engine that turns recorded outcomes into comparisons and a family of
adjusted verdicts.

- `load_plan` reads and checks the plan: each comparison's conditions, test, direction, smallest
  effect of interest, bounds and role.
- `judge` computes one comparison from two conditions' outcomes (ragft.stats.compare), after checking
  that the comparison and its conditions are declared; `judge_chapter` judges every comparison the
  plan declares for a chapter (a chapter's one recording step asks for them through
  ragft.results.state_comparisons) and no chapter codes a test, a direction or a margin.
- `adjust` decides a family: Holm's adjusted p for the primary comparisons, each verdict decided on
  it, and the verdicts the adjustment changed flagged.
- `rejudge` recomputes a results file's comparisons from its stored outcomes (the measurement is
  untouched; only the analysis moves to this plan).

Two families: the book's (`comparisons`: the claims' tests, adjusted together by chapter 7) and the
reader's case (`case.comparisons`: chapter 8's template, the same engine on the reader's own
questions, adjusted among themselves and never mixed into the book's).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import yaml

from . import stats
from .claims import load_claims
from .constants import DATA_DIR, PROFILES, PROJECT_ROOT
from .files import git, read_json, write_atomically

PLAN_FILE = DATA_DIR / "analysis_plan.yaml"
BARS = {"quote_min", "marker_min"}  # the bars a fitness rule may state besides its metric's min (RAFT's, draw d2)
BOOK, CASE = "book", "case"  # the families: the book's claims, and chapter 8's template for a reader's case
FIELDS = {"chapter", "a", "b", "metric", "unit", "test", "kind", "expect", "sesoi_from", "margin", "n", "floor",
          "ceiling", "role", "note", "fitness", "profiles", "caveat"}
REQUIRED = FIELDS - {"margin", "note", "fitness", "profiles", "caveat"}
ROLES = ("primary", "secondary")
TESTS = (*stats.TESTS, "check")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
CLAIM_PREFIX = re.compile(r"^([KRFTSUDN]\d+)-")


def condition_matches(template: str, name: str) -> bool:
    """A condition name against the plan's (a placeholder stands for any value the run chose)."""
    parts = PLACEHOLDER.split(template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else r"[^,:]+?" for i, p in enumerate(parts))
    return re.fullmatch(pattern, name) is not None


@dataclass(frozen=True)
class Planned:
    id: str
    claim: str | None  # the claim id it tests (None for a secondary comparison of its own)
    chapter: str
    a: str
    b: str
    metric: str
    unit: str
    test: str
    kind: str
    expect: str
    sesoi: float
    sesoi_from: str
    n: int
    floor: float | None
    ceiling: float | None
    role: str
    margin: float = 0.0
    note: str = ""
    fitness: tuple[str, ...] = ()  # the fitness rules (Plan.fitness) its trained arms must meet
    stated: tuple[float, float] | None = None  # the source's stated difference (claims.yaml, in points) as rates
    profiles: tuple[str, ...] = ()  # the profiles that measure it (empty: every one); `note` says why not the others
    family: str = BOOK  # BOOK, or CASE: chapter 8's family of its own (adjusted apart, no claim)
    caveat: str = ""  # one line a reader needs beside its verdict (what an arm was given that no reader has)

    def names(self, a: str | None, b: str | None) -> tuple[str, str]:
        """The conditions a chapter compares: the plan's own, or values for its placeholders that
        match; anything else is a condition the plan does not declare."""
        out = []
        for side, template, name in (("a", self.a, a), ("b", self.b, b)):
            name = template if name is None else name
            if PLACEHOLDER.search(name) or not condition_matches(template, name):
                raise ValueError(f"comparison {self.id}: condition {side} {name!r} is not the plan's {template!r} "
                                 f"({PLAN_FILE.name})")
            out.append(name)
        return out[0], out[1]


@dataclass(frozen=True)
class Plan:
    comparisons: dict[str, Planned]
    computed: tuple[str, ...]
    alpha: float
    power: float
    adjustment: str
    choices: tuple[dict, ...]
    path: Path
    fitness: dict = None  # name -> {chapter, metric, min, why[, checkpoint]}: what a trained arm must reach to speak
    upper_bounds: dict = None  # name -> {arms: [regular expressions on condition templates], given: what no reader has}

    def upper_bound(self, comparison_id: str, short: bool = False, named: tuple[str, str] | None = None) -> str | None:
        """What an arm of the comparison was given that no reader has (the plan's `upper_bounds`: the
        arms it names, then what they were given, or with `short` the bound's name: "gold questions";
        "; " between two kinds), or None: such an arm is an upper bound of its approach. `named`: the
        comparison's (a, b) as a run named them ("DSF p3 held-out" for the plan's "DSF p{count} held-out")."""
        spec = self.comparisons.get(comparison_id)
        as_run = dict(zip((spec.a, spec.b), named)) if spec and named else {}
        said = [f"{' and '.join(as_run.get(a, a) for a in arms)}: {name if short else given}"
                for arms, name, given in self._bounds(comparison_id)]
        return "; ".join(said) or None

    def upper_bound_names(self, comparison_id: str) -> list[str]:
        """The names of the upper bounds an arm of the comparison is ("gold questions"), none where no arm is."""
        return [name for _, name, _ in self._bounds(comparison_id)]

    def _bounds(self, comparison_id: str) -> list[tuple[list[str], str, str]]:
        """(the comparison's arms a bound names, the bound's name, what they were given), per bound."""
        spec, out = self.comparisons.get(comparison_id), []
        for name, bound in (self.upper_bounds or {}).items() if spec else ():
            arms = [t for t in dict.fromkeys((spec.a, spec.b)) if any(re.search(p, t) for p in bound["arms"])]
            if arms:
                out.append((arms, name.replace("_", " "), bound["given"]))
        return out

    @property
    def primary(self) -> list[str]:
        """The book's family: primary comparisons that are tested (not sanity checks)."""
        return self.members(BOOK)

    def members(self, family: str) -> list[str]:
        """A family's primary comparisons that are tested (BOOK: the claims'; CASE: chapter 8's)."""
        return [k for k, c in self.comparisons.items() if c.role == "primary" and c.test != "check" and c.family == family]

    def family_size(self, family: str, profile: str | None = None) -> int:
        """The size of a family as Holm and the power arithmetic both count it: its primary tested
        comparisons that the profile measures (the plan's `profiles`; every one where no profile is
        given). Fixed by the plan before any run, whatever the run's outcomes: a comparison at a bound
        or with an unfit arm stays in it (leaving it out after seeing its result would select the
        family on the data)."""
        return sum(1 for k in self.members(family) if profile is None or self.measured_in(k, profile))

    def family_of(self, comparison_id: str) -> str:
        """The family a comparison id belongs to (a figure rebuilt by arithmetic: the book's)."""
        spec = self.comparisons.get(comparison_id)
        return spec.family if spec else BOOK

    def measured_in(self, comparison_id: str, profile: str) -> bool:
        """Whether a profile's run measures the comparison (the plan's `profiles`; every one if unset)."""
        spec = self.get(comparison_id)
        return not spec.profiles or profile in spec.profiles

    def not_measured(self, profile: str) -> dict[str, str]:
        """{comparison id: why} for the comparisons a profile's run leaves to other profiles."""
        return {k: f"measured in the {' and '.join(c.profiles)} profiles only: {c.note}"
                for k, c in self.comparisons.items() if not self.measured_in(k, profile)}

    def elsewhere(self, comparison_id: str) -> str:
        """Where a comparison this profile leaves to others is measured, as its "not measured in this
        run" sentence says it."""
        return f"the {' and '.join(self.get(comparison_id).profiles)} profiles measure it (the analysis plan)"

    def get(self, comparison_id: str) -> Planned:
        if comparison_id not in self.comparisons:
            raise KeyError(f"comparison {comparison_id!r} is not declared in {self.path}: declare it (conditions, "
                           f"test, direction, smallest effect of interest, bounds) before a chapter computes it")
        return self.comparisons[comparison_id]


def _number(value, where: str, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (low is not None and value < low):
        raise ValueError(f"{where}: {value!r} is not a finite number{f' >= {low}' if low is not None else ''}")
    return float(value)


def load_plan(path: str | Path = PLAN_FILE, claims: dict | None = None) -> Plan:
    """The plan, checked: every field present and of its kind, conditions with balanced placeholders,
    the smallest effect of interest from a declared rule or the claim's stated figure, a primary
    comparison only where it tests a claim that lists it, and every comparison a claim lists declared
    here (tested, or computed by chapter 6's arithmetic)."""

    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("comparisons"), dict):
        raise ValueError(f"{path}: expected `family`, `rules` and `comparisons` mappings")
    family, rules = raw.get("family") or {}, raw.get("rules") or {}
    if family.get("adjustment") != "holm":
        raise ValueError(f"{path}: family.adjustment must be holm (the only one the engine implements)")
    alpha = _number(family.get("alpha"), f"{path}: family.alpha", 0)
    claims = load_claims() if claims is None else claims
    fitness = raw.get("fitness") or {}
    for name, rule in fitness.items():
        if not isinstance(rule, dict) or not {"chapter", "metric", "min", "why"} <= set(rule) <= {
                "chapter", "metric", "min", "why", "checkpoint", *BARS}:
            raise ValueError(f"{path}: fitness {name}: give chapter, metric, min and why (and optionally checkpoint, "
                             f"{', '.join(BARS)})")
        _number(rule["min"], f"{path}: fitness {name}: min", 0)
        for bar in BARS.intersection(rule):  # a rule's own bars (RAFT's quote and marker rates), shares in [0, 1]
            if not 0 <= _number(rule[bar], f"{path}: fitness {name}: {bar}", 0) <= 1:
                raise ValueError(f"{path}: fitness {name}: {bar} is a share: give a number in [0, 1]")
        if "checkpoint" in rule:  # the rule that picks a curve's checkpoint on development facts
            cp = rule["checkpoint"]
            if not isinstance(cp, dict) or set(cp) != {"dev_trained_min", "heldout_slack"}:
                raise ValueError(f"{path}: fitness {name}: checkpoint takes dev_trained_min and heldout_slack")
            _number(cp["dev_trained_min"], f"{path}: fitness {name}: checkpoint.dev_trained_min", 0)
            _number(cp["heldout_slack"], f"{path}: fitness {name}: checkpoint.heldout_slack", 0)
    upper_bounds = raw.get("upper_bounds") or {}
    for name, bound in upper_bounds.items():
        if not isinstance(bound, dict) or set(bound) != {"arms", "given"} or not isinstance(bound["arms"], list):
            raise ValueError(f"{path}: upper_bounds {name}: give arms (a list of regular expressions on condition "
                             "names) and given (what those arms had that no reader has)")
        for pattern in bound["arms"]:
            re.compile(pattern)
    out = {}
    case = raw.get("case") or {}
    if case and (not isinstance(case, dict) or not isinstance(case.get("comparisons"), dict)):
        raise ValueError(f"{path}: case: expected a `comparisons` mapping (chapter 8's template for a reader's case)")
    sections = [(BOOK, raw["comparisons"]), (CASE, (case or {}).get("comparisons") or {})]
    for family_name, section in sections:
        for cid, c in section.items():
            if cid in out:
                raise ValueError(f"{path}: comparison {cid}: declared twice (ids are unique across the book's and the "
                                 "case's comparisons)")
            out[cid] = _comparison(cid, c, family_name, path, claims, rules, fitness)
    computed = tuple(raw.get("computed") or ())
    clash = sorted(set(computed) & set(out))
    if clash:
        raise ValueError(f"{path}: {clash} are both tested and computed")
    for claim in claims.values():
        undeclared = [k for k in claim.comparisons if k not in out and k not in computed]
        if undeclared:
            raise ValueError(f"{path}: claim {claim.id} lists {undeclared}, which the plan does not declare")
    unlisted = [k for k, c in out.items() if c.role == "primary" and c.family == BOOK and k not in claims[c.claim].comparisons]
    if unlisted:
        raise ValueError(f"{path}: primary comparisons {unlisted} are not listed by their claim in data/claims.yaml, "
                         f"so they would decide nothing")
    for i, choice in enumerate(raw.get("choices") or ()):
        if set(choice) != {"what", "chapter", "made_on", "evidence"} or choice["made_on"] not in ("development", "test", "fixed"):
            raise ValueError(f"{path}: choice {i}: give what, chapter, made_on (development | test | fixed) and evidence")
    return Plan(out, computed, alpha, _number(family.get("power", stats.POWER), f"{path}: family.power", 0),
                family["adjustment"], tuple(raw.get("choices") or ()), path, fitness, upper_bounds)


def _comparison(cid: str, c, family_name: str, path: Path, claims: dict, rules: dict, fitness: dict) -> Planned:
    """One comparison of the plan, checked (load_plan's rules), in the family it is declared in."""
    where = f"{path}: comparison {cid}"
    if not isinstance(c, dict):
        raise ValueError(f"{where}: expected a mapping")
    missing, unknown = sorted(REQUIRED - set(c)), sorted(set(c) - FIELDS)
    if missing or unknown:
        raise ValueError(f"{where}: missing {missing}, unknown {unknown}")
    if c["test"] not in TESTS or c["kind"] not in stats.KINDS or c["expect"] not in stats.DIRECTIONS or c["role"] not in ROLES:
        raise ValueError(f"{where}: test {c['test']!r} (one of {TESTS}), kind {c['kind']!r}, expect "
                         f"{c['expect']!r} or role {c['role']!r} (one of {ROLES}) is not allowed")
    m = CLAIM_PREFIX.match(cid)
    claim = m.group(1) if m and m.group(1) in claims else None
    if family_name == CASE and claim is not None:
        raise ValueError(f"{where}: a case comparison tests the reader's questions, not a claim: name it Y-...")
    if claim is None and c["role"] == "primary" and family_name == BOOK:
        raise ValueError(f"{where}: a primary comparison tests a claim of data/claims.yaml (its id starts with one)")
    span = claims[claim].effects.get(cid) if claim else None
    if c["sesoi_from"] == "stated":
        if not span:
            raise ValueError(f"{where}: sesoi_from: stated, but data/claims.yaml states no effect for it")
        sesoi = min(abs(span[0]), abs(span[1])) / 100
    elif c["sesoi_from"] in rules:
        sesoi = _number(rules[c["sesoi_from"]].get("sesoi"), f"{path}: rules.{c['sesoi_from']}", 0)
    else:
        raise ValueError(f"{where}: sesoi_from {c['sesoi_from']!r} is neither `stated` nor a rule of {sorted(rules)}")
    margin = _number(c.get("margin", 0.0), f"{where}: margin", 0)
    if c["test"] != "check" and (c["expect"] == "equal") != (margin > 0):
        raise ValueError(f"{where}: an equivalence claim (expect: equal) and only one has a margin > 0")
    bounds = [None if c[k] is None else _number(c[k], f"{where}: {k}") for k in ("floor", "ceiling")]
    if None not in bounds and bounds[0] >= bounds[1]:
        raise ValueError(f"{where}: floor {bounds[0]} is not below ceiling {bounds[1]}")
    if c["test"] == "welch-log" and (c["n"] < 5 or any(b is not None for b in bounds) or c["expect"] == "equal"):
        raise ValueError(f"{where}: timed repetitions need n >= 5 per arm, no floor or ceiling, and a direction "
                         f"(equal by construction is a check)")
    for side in ("a", "b"):
        if not isinstance(c[side], str) or c[side].count("{") != c[side].count("}"):
            raise ValueError(f"{where}: condition {side} must be a name, with balanced {{placeholders}}")
    n = c["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{where}: n must be the planned number of units (an integer >= 1)")
    unknown = [f for f in c.get("fitness") or () if f not in fitness]
    if unknown:
        raise ValueError(f"{where}: fitness {unknown} is not a rule of `fitness` ({sorted(fitness)})")
    profiles = c.get("profiles") or []
    if not isinstance(profiles, list) or not set(profiles) <= set(PROFILES) or (profiles and not c.get("note")):
        raise ValueError(f"{where}: profiles must list some of {PROFILES}, with a note that says why the others "
                         f"do not measure it")
    return Planned(cid, claim, str(c["chapter"]), c["a"], c["b"], str(c["metric"]), str(c["unit"]), c["test"],
                       c["kind"], c["expect"], sesoi, c["sesoi_from"], n, bounds[0], bounds[1], c["role"],
                       margin, str(c.get("note") or ""), tuple(c.get("fitness") or ()),
                       (span[0] / 100, span[1] / 100) if span else None, tuple(profiles), family_name,
                       str(c.get("caveat") or ""))


PILOT = "pilot"  # the draw of a plan without `draw` and of a results file whose params name none


def draw_of(plan: dict) -> str:
    """The draw a plan (as its file reads) judges its comparisons on: its `draw`'s name, or the pilot's."""
    return str(((plan or {}).get("draw") or {}).get("name") or PILOT)


@lru_cache(maxsize=1)
def the_draw() -> str:
    """The draw the repository's plan judges its comparisons on (results files of another draw name it)."""
    return draw_of(yaml.safe_load(PLAN_FILE.read_text()) or {})


@lru_cache(maxsize=1)
def the_plan() -> Plan:
    """The repository's plan, read once per process."""
    return load_plan()


def prose_terms(plan: Plan | None = None) -> dict[str, str]:
    """The plan's levels as the prose cites them (glued, never typed): the family's alpha, as a number
    and a share, the power "questions needed" is sized for, and an equivalence claim's interval."""
    plan = plan or the_plan()
    return {"plan_alpha": f"{plan.alpha:g}", "plan_alpha_pct": f"{plan.alpha:.0%}", "plan_power": f"{plan.power:.0%}",
            "equivalence_level": f"{1 - 2 * plan.alpha:.0%}"}


def glue_key(comparison_id: str) -> str:
    """The glue key of a comparison's sentence in the prose: its plan id, lower case, with underscores
    (K1-rag-vs-dsf -> k1_rag_vs_dsf; `<key>_verdict` and `<key>_diff` beside it)."""
    return comparison_id.lower().replace("-", "_")


def seed_tag(k: int) -> str:
    """The suffix of a seeded arm's outcomes from its k-th training seed (the plan's `seeds`): each
    seed's are "<condition> (seed k)", their mean "<condition>"."""
    return f" (seed {k})"


def seeded_names(name: str, outcomes: dict[str, dict]) -> list[str]:
    """A condition's per-seed names recorded in `outcomes` ("<name> (seed 1)", ...), [] for an arm
    without seeds."""
    out, k = [], 1
    while name + seed_tag(k) in outcomes:
        out.append(name + seed_tag(k))
        k += 1
    return out


def judge_seeds(spec: "Planned", a: str, b: str, outcomes: dict[str, dict], plan: "Plan",
                profile: str | None = None) -> list[dict] | None:
    """The comparison on each training seed's outcomes alone (the plan's `seeds.per_seed`): a seeded
    arm's seed k against the other arm's seed k, or the other arm itself where it has no seeds; each
    tested by the test for its outcomes' kind (0/1 outcomes: exact McNemar with Tango's interval).
    Raw p and verdict; None where neither arm has seeds."""
    names_a, names_b = seeded_names(a, outcomes), seeded_names(b, outcomes)
    if not names_a and not names_b:
        return None
    k = max(len(names_a), len(names_b))
    if names_a and names_b and len(names_a) != len(names_b):
        raise ValueError(f"comparison {spec.id}: {a} has {len(names_a)} seeds and {b} {len(names_b)}")
    out = []
    for i in range(k):
        sa, sb = (names_a[i] if names_a else a), (names_b[i] if names_b else b)
        values = [v for name in (sa, sb) for v in outcomes[name].values()]
        seed_spec = replace(spec, kind="binary") if all(v in (0, 1) for v in values) else spec
        c = stats.compare(seed_spec, sa, outcomes[sa], sb, outcomes[sb], plan.alpha,
                          plan.family_size(spec.family, profile), spec.stated, plan.power)
        out.append({**c.as_dict(), "seed": i + 1})
    return out


def judge(comparison_id: str, outcomes: dict[str, dict], a: str | None = None, b: str | None = None,
          plan: Plan | None = None, profile: str | None = None) -> stats.Comparison:
    """One declared comparison from recorded outcomes ({condition: {unit id: score}}), raw: its test,
    its interval, its bound, its size against the stated effect, and the units that would detect the
    smallest effect of interest at the family's strictest Holm level (the family the profile
    measures: Plan.family_size)."""
    plan = plan or the_plan()
    spec = plan.get(comparison_id)
    a, b = spec.names(a, b)
    missing = [x for x in (a, b) if x not in outcomes]
    if missing:
        raise KeyError(f"comparison {comparison_id}: no outcomes recorded for {missing}")
    if spec.test == "check":
        return _check(spec, a, outcomes[a], b, outcomes[b])
    found = stats.compare(spec, a, outcomes[a], b, outcomes[b], plan.alpha, plan.family_size(spec.family, profile),
                          spec.stated, plan.power)
    found.seeds = judge_seeds(spec, a, b, outcomes, plan, profile)
    return found


def judge_chapter(chapter: str, outcomes: dict[str, dict], choices: dict | None = None, plan: Plan | None = None,
                  profile: str | None = None, unmeasured: dict[str, str] | None = None) -> dict[str, stats.Comparison | str]:
    """Every comparison the plan declares for `chapter`, in the plan's order: judged (judge) where the
    run recorded both of its conditions, else why not, as a "not measured in this run" sentence says
    it: the profiles that measure it (the plan's `profiles`), the chapter's own reason (`unmeasured`:
    {comparison id: why}, where the run's parameters leave an arm out, e.g. one paraphrase count), or
    the condition this run did not ask. `choices` gives the values of the plan's placeholders
    ({"k": 3} for "few-shot k={k}"); where two comparisons of a chapter give one placeholder different
    values, a comparison's own are under its id ({"F6-fewer-chunks": {"k": 5}, "k": 3})."""
    plan, choices, unmeasured = plan or the_plan(), choices or {}, unmeasured or {}
    unknown = sorted(set(unmeasured) - {c for c, s in plan.comparisons.items() if s.chapter == chapter})
    if unknown:
        raise KeyError(f"{chapter}: {unknown} are not comparisons the plan declares for this chapter")
    out: dict[str, stats.Comparison | str] = {}
    for cid, spec in plan.comparisons.items():
        if spec.chapter != chapter:
            continue
        if profile is not None and not plan.measured_in(cid, profile):
            out[cid] = plan.elsewhere(cid)
            continue
        if cid in unmeasured:
            out[cid] = unmeasured[cid]
            continue
        a, b = (PLACEHOLDER.sub(lambda m: _choice(cid, m.group(1), choices), t) for t in (spec.a, spec.b))
        missing = [x for x in (a, b) if x not in outcomes]
        out[cid] = f"{missing[0]} was not asked in this run" if missing else judge(cid, outcomes, a, b, plan, profile)
    return out


def _choice(comparison_id: str, name: str, choices: dict) -> str:
    own = choices.get(comparison_id) or {}
    if name in own:
        return str(own[name])
    if name not in choices:
        raise KeyError(f"comparison {comparison_id}: its conditions name {{{name}}}; give the run's choice of it "
                       f"(choices={{{name!r}: ...}})")
    return str(choices[name])


def _check(spec: Planned, a: str, va: dict, b: str, vb: dict) -> stats.Comparison:
    """A quantity identical by construction: shown (its mean difference and spread), never tested."""
    import numpy as np

    x, y = np.array(list(va.values()), float), np.array(list(vb.values()), float)
    diff = float(x.mean() - y.mean())
    return stats.Comparison(spec.id, a, b, min(len(x), len(y)), diff, float(np.min(x) - np.max(y)),
                            float(np.max(x) - np.min(y)), None, CHECK, spec.expect, spec.kind, spec.margin,
                            float(x.mean()), float(y.mean()), 0.0, 0, spec.unit, "check", 1.0, spec.sesoi, spec.role,
                            n_planned=spec.n)


CHECK = "sanity check: equal by construction, not tested"


def unfit(comparison: dict, metrics: dict[str, dict], plan: Plan | None = None,
          known_only: bool = False) -> list[str] | None:
    """The fitness rules a comparison's trained arms miss, as "rule: measured < min" lines ([] when
    all are met); None when a rule's chapter has not published its metric in this run (not known),
    unless `known_only`, which checks the rules whose metric is there and skips the others (a
    chapter's own prose, before the ledger sees the other chapters)."""
    plan = plan or the_plan()
    spec = plan.comparisons.get(comparison["claim"])
    missed = []
    for name in spec.fitness if spec else ():
        rule = plan.fitness[name]
        value = (metrics.get(rule["chapter"]) or {}).get(rule["metric"])
        if value is None and known_only:
            continue
        if value is None:
            return None
        if value < rule["min"]:
            missed.append(f"{name}: {rule['metric']} {value:.2f} < {rule['min']:.2f}")
    return missed


def adjust(comparisons: list[dict], plan: Plan | None = None, metrics: dict[str, dict] | None = None,
           family: str = BOOK, profile: str | None = None) -> list[dict]:
    """A family's verdicts (BOOK, or CASE for chapter 8): Holm's adjusted p over the family the
    profile measures (Plan.family_size: the same count the power arithmetic divides alpha by; a
    member this run does not hold counts with p = 1, so a partial run is never less strict), each
    verdict decided on it, the raw verdict kept where the adjustment changed it. Before p: an arm that missed
    its declared fitness (the chapters' `metrics`, {chapter: metrics}) makes the comparison "not
    decided: an arm did not reach its fitness"; then a bound makes it uninformative. Secondary
    comparisons keep their raw verdict (exploratory); computed figures and checks are untouched."""
    plan = plan or the_plan()
    held = [c for c in comparisons if c.get("role") == "primary" and c.get("test") in stats.TESTS
            and plan.family_of(c["claim"]) == family]
    # the book's family is fixed by the plan for the run's profile; a reader's case (chapter 8) is what
    # its corpus allowed; without a profile, the comparisons given are the family
    absent = max(plan.family_size(family, profile) - len(held), 0) if family == BOOK and profile else 0
    adjusted = dict(zip([c["claim"] for c in held], stats.holm([c["p"] for c in held] + [1.0] * absent)))
    out = []
    for c in comparisons:
        c = dict(c)
        if c.get("test") in stats.TESTS:
            c["unfit"] = unfit(c, metrics or {}, plan)
            if family == CASE and c["unfit"] is None and plan.family_of(c["claim"]) == CASE:
                # a reader's case is one chapter: a fitness metric it did not record was not measured
                # (a fine-tune on documents alone, no training question to check it), so not met
                c["unfit"] = ["fitness not measured: no training questions"]
            raw = stats.decide(c, c["p"], plan.alpha)
            c["verdict"] = raw
        if c["claim"] in adjusted:
            c["p_adjusted"] = adjusted[c["claim"]]
            c["verdict"] = stats.decide(c, c["p_adjusted"], plan.alpha)
            c["verdict_raw"] = raw if raw != c["verdict"] else None
        out.append(c)
    return out


FRAGILE = "fragile (training seed)"  # the mark beside a verdict whose training seeds disagree (the plan's `seeds.fragile`)


def seeds_disagree(seeds: list[dict]) -> bool:
    """The plan's `seeds.fragile` rule: the training seeds' verdicts, each judged alone, are not all the same."""
    return len({s["verdict"] for s in seeds}) > 1


def seed_verdicts(comparisons: list[dict], plan: Plan | None = None, metrics: dict[str, dict] | None = None,
                  family: str = BOOK, profile: str | None = None) -> list[dict]:
    """Each training seed's verdict beside an adjusted family's comparisons (the plan's
    `seeds.per_seed`): a seed's p multiplied by the factor Holm gave its comparison (the family's size
    less the comparison's rank among the family's raw p, as `adjust` counts them; a secondary's p as it
    is), capped at 1; its fitness that seed's own (a fitness metric "<metric>_seed<k>" where the chapter
    records one, else the arm's); its verdict by the same rules (stats.decide). A comparison whose
    seeds' verdicts are not all the same is marked `fragile`; its verdict stays the seed mean's."""
    plan = plan or the_plan()
    held = sorted((c for c in comparisons if c.get("role") == "primary" and c.get("test") in stats.TESTS
                   and plan.family_of(c["claim"]) == family), key=lambda c: c["p"])
    size = max(plan.family_size(family, profile) if family == BOOK and profile else len(held), len(held))
    factor = {c["claim"]: size - rank for rank, c in enumerate(held)}
    out = []
    for c in comparisons:
        c = dict(c)
        if c.get("seeds"):
            seeds = []
            for s in c["seeds"]:
                per_seed_metrics = {ch: {k: m.get(f"{k}_seed{s['seed']}", v) for k, v in m.items()}
                                    for ch, m in (metrics or {}).items()}
                s = {**s, "unfit": unfit(c, per_seed_metrics, plan)}
                s["p_adjusted"] = min(1.0, factor[c["claim"]] * s["p"]) if c["claim"] in factor else None
                s["verdict"] = stats.decide(s, s["p_adjusted"] if s["p_adjusted"] is not None else s["p"], plan.alpha)
                seeds.append(s)
            c["seeds"] = seeds
            c["fragile"] = seeds_disagree(seeds)
        out.append(c)
    return out


def rejudge(doc: dict, plan: Plan | None = None) -> list[dict]:
    """A results file's comparisons recomputed from its stored outcomes by this plan (each by its id,
    on the conditions it compared; one the plan does not declare is refused); figures rebuilt by
    arithmetic are kept as they are. A reader's case (chapter 8) is adjusted as its own family, with
    its chapter's fitness metrics, as the chapter did."""
    plan = plan or the_plan()
    outcomes = doc.get("outcomes") or {}
    profile = doc.get("profile")
    out = [c if c.get("kind") == "computed" else judge(c["claim"], outcomes, c["a"], c["b"], plan, profile).as_dict()
           for c in doc.get("comparisons") or []]
    if any(plan.family_of(c["claim"]) == CASE for c in out):  # chapter 8 adjusts its own family, as it ran
        out = adjust(out, plan, {doc.get("chapter"): doc.get("metrics") or {}}, family=CASE, profile=profile)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m ragft.plan rejudge FILE...`: recompute the comparisons of results files from their
    stored outcomes by this plan, in place, and record it in their provenance (`rejudged`: the commit
    whose plan and engine judged them). The measurements, and the provenance of the run that made
    them, are untouched."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m ragft.plan", description=main.__doc__)
    parser.add_argument("command", choices=["rejudge", "check"])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    plan = load_plan()
    here = {profile: sum(plan.measured_in(k, profile) for k in plan.primary) for profile in PROFILES}
    print(f"{plan.path}: {len(plan.comparisons)} comparisons, {len(plan.primary)} in the book's family ("
          + ", ".join(f"{n} measured in the {profile} profile" for profile, n in here.items())
          + f"), {len(plan.members(CASE))} in the reader's case's")
    if args.command == "check":
        return 0
    sha = git("rev-parse", "HEAD").stdout.strip()
    for path in args.files:
        doc = read_json(path)
        doc["comparisons"] = rejudge(doc, plan)
        doc["provenance"]["rejudged"] = {"git_sha": sha, "git_dirty": bool(git("status", "--porcelain").stdout.strip())}
        write_atomically(path, json.dumps(doc, indent=1) + "\n")
        print(f"{path}: {len(doc['comparisons'])} comparisons rejudged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
