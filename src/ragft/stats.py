"""Intervals, paired tests, power arithmetic and the verdict of one planned comparison, on scipy.stats.

A comparison is declared in the analysis plan (data/analysis_plan.yaml, read by ragft.plan) and
judged here from two conditions' per-unit outcomes ({unit id: score}) by `compare`:

  paired, 0/1 outcomes   the exact McNemar test (a binomial test on the discordant pairs, at any n),
              two-sided, and Tango's score interval for the paired difference of rates (Tango 1998;
              recommended by Fagerland, Lydersen and Laake 2014), which keeps its width when every
              disagreement goes one way or none disagree. The interval inverts a score test, not the
              exact one: at the margin (5 : 0 discordant pairs) it can exclude zero where the exact test,
              which is conservative, does not reject; the verdict reads the exact p.
  paired, continuous     a sign-flip test on the paired differences, two-sided, and the interval of
              differences it does not reject: exact up to EXACT_MAX differences, else a fixed-seed
              Monte Carlo estimate on N_SIGNS sign patterns (its floor, 1 / (1 + N_SIGNS) = 5e-05, lies
              below every Holm threshold the book's family meets: alpha / 40 = 0.00125)
  welch-log   independent timed repetitions: Welch's t-test on log seconds and its own interval

Each comparison records how its p was computed (`p_method`). An equivalence claim uses two one-sided
tests against its margin and their 90 % interval. A verdict separates direction and size: a
directional claim is "supported" when its p is below alpha with the claimed sign and its interval
clears the smallest effect of interest; below alpha with the sign but an interval that reaches below
that effect is "direction supported, size not shown". A comparison whose arms sit at the floor or
ceiling of the metric by less than the smallest effect of interest (both at one bound, or one at each)
is uninformative, whatever its p; the family's adjustment (Holm, ragft.plan.adjust) decides the book's
verdicts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as _st

ALPHA = 0.05
POWER = 0.8
N_RESAMPLES = 4999
SEED = 0
DIRECTIONS = ("greater", "less", "equal")  # a > b, a < b, |a - b| <= margin
KINDS = ("binary", "continuous")
# Planning value for the spread of paired differences when a sample shows none (all pairs agree):
# the standard deviation of a difference of two binary outcomes that disagree on a quarter of the
# questions. Without it a comparison of two identical columns would claim it could detect anything.
PLANNING_SD = 0.5
SUPPORTED, CONTRADICTED = "supported", "contradicted"


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion: honest error bars for small samples."""
    if n == 0:
        return (float("nan"), float("nan"))
    ci = _st.binomtest(int(round(successes)), n).proportion_ci(confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap (BCa) interval for a mean of per-question scores, such as F1."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    if np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    res = _st.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES,
                        method="BCa", rng=np.random.default_rng(SEED))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes (1 = right): the sign-flip test on
    their differences, which is exactly that test on 0/1 outcomes (`signflip_p`)."""
    return signflip_p(np.subtract(np.asarray(a, dtype=int), np.asarray(b, dtype=int)))


def tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for a paired difference of rates delta = P(a right, b wrong) - P(a wrong,
    b right), from b and c discordant pairs (a right / b right) among n: (b - c - n delta) over its
    standard error at the restricted maximum-likelihood estimate of P(a wrong, b right) (Tango 1998,
    Stat Med 17:891). At delta = 0 it is McNemar's (b - c) / sqrt(b + c)."""
    if not -1.0 <= delta <= 1.0 or n < 1:
        raise ValueError(f"delta={delta} must lie in [-1, 1] and n={n} be at least 1")
    aa, bb = 2.0 * n, -b - c + (2.0 * n - b + c) * delta
    cc = -c * delta * (1.0 - delta)
    q21 = (math.sqrt(max(bb * bb - 4.0 * aa * cc, 0.0)) - bb) / (2.0 * aa)
    var = n * (2.0 * q21 + delta * (1.0 - delta))
    num = b - c - n * delta
    if var <= 0.0:  # no discordant pair expected: the statistic is 0 where the data match delta, else infinite
        return 0.0 if abs(num) < 1e-12 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_interval(b: int, c: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The paired differences of rates that Tango's two-sided score test at `alpha` does not reject:
    the score interval, found by root-finding on each side of the observed difference (the statistic
    falls as delta rises). It never has zero width while n is finite, whatever b and c are."""
    from scipy.optimize import brentq

    z, est = float(_st.norm.ppf(1 - alpha / 2)), (b - c) / n
    f = lambda delta: tango_z(b, c, n, delta)  # noqa: E731
    eps = 1e-12
    low = -1.0 if f(-1.0 + eps) <= z else brentq(lambda x: f(x) - z, -1.0 + eps, est, xtol=1e-12)
    high = 1.0 if f(1.0 - eps) >= -z else brentq(lambda x: f(x) + z, est, 1.0 - eps, xtol=1e-12)
    return float(low), float(high)


def tango_p(b: int, c: int, n: int, delta: float, alternative: str) -> float:
    """One-sided p of Tango's score test against a difference `delta` (normal approximation):
    'greater' tests that the difference exceeds delta, 'less' that it falls short of it."""
    z = tango_z(b, c, n, delta)
    if alternative == "greater":
        return float(_st.norm.sf(z))
    if alternative == "less":
        return float(_st.norm.cdf(z))
    raise ValueError(f"alternative={alternative!r}: use greater or less")


def auroc(positives, negatives) -> float:
    """Area under the ROC curve of a score meant to be higher for `positives` (e.g. a refusal score
    on unanswerable questions) than for `negatives` (answerable ones): the probability that a random
    positive outscores a random negative, ties counting half (the Mann-Whitney U statistic)."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs both kinds of questions: {len(pos)} positives, {len(neg)} negatives")
    return float(_st.mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


MAX_FALSE_REFUSALS = 0.05  # refusal recall is read where at most this share of answerable questions is refused


def recall_at_fpr(positives, negatives, max_fpr: float = MAX_FALSE_REFUSALS) -> tuple[float, float]:
    """The share of positives caught by the lowest threshold that flags at most `max_fpr` of the
    negatives (refusal recall at <= 5 % false refusals): (recall, threshold). A positive is flagged
    when its score is strictly above the threshold."""
    pos, neg = np.sort(np.asarray(positives, float)), np.sort(np.asarray(negatives, float))
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"recall at a false-positive rate needs both kinds: {len(pos)} positives, {len(neg)} negatives")
    allowed = math.floor(max_fpr * len(neg))  # negatives that may score above the threshold
    threshold = float(neg[len(neg) - 1 - allowed])
    return float(np.mean(pos > threshold)), threshold


def _sd(d, kind: str) -> float:
    """Spread of the paired differences for power arithmetic. Binary differences are floored at the
    planning value: at small n a low observed discordance is mostly luck, and would promise power the
    design does not have."""
    d = np.asarray(d, dtype=float)
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    if kind == "binary":
        return max(sd, PLANNING_SD)
    return sd if sd > 0 else PLANNING_SD


def min_detectable_effect(n: int, sd: float = PLANNING_SD, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired test at `alpha` detects with `power`, for
    paired differences with standard deviation `sd` (normal approximation)."""
    if n < 1:
        return float("inf")
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return float(z * sd / math.sqrt(n))


def n_needed(effect: float, sd: float = PLANNING_SD, alpha: float = ALPHA, power: float = POWER) -> int:
    """Paired questions needed to detect a true mean difference `effect` (normal approximation)."""
    if effect == 0:
        return 0  # nothing to detect; callers report the MDE instead
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return int(math.ceil((z * sd / abs(effect)) ** 2))


# ---------------------------------------------------------------------------------------------
# Tests whose intervals are the sets of differences they do not reject (so a raw interval and a raw
# p never disagree), and the verdict of one planned comparison. The plan (ragft.plan) says which test,
# which direction, the smallest effect of interest and the floor and ceiling of the metric.

TESTS = ("paired", "welch-log")
EXACT_MAX = 16  # up to 2**16 sign patterns are enumerated; above, N_SIGNS fixed-seed random ones
N_SIGNS = 19_999
# how a comparison's p was computed (its `p_method`)
EXACT_MCNEMAR = "exact McNemar (binomial test on the discordant pairs)"
SIGNFLIP_EXACT = "sign-flip, exact (every sign pattern)"
SIGNFLIP_MC = f"sign-flip, Monte Carlo ({N_SIGNS:,} fixed-seed sign patterns)"
TANGO_TOST = "two one-sided Tango score tests (normal approximation)"
WELCH = "Welch's t on log seconds"
# verdicts of one comparison (ragft.verdict adds those of a claim)
NOT_DECIDED = "not decided at this n"
DIRECTION_ONLY = "direction supported, size not shown"  # p and sign as claimed; the interval reaches below the size
FLOOR, CEILING, BOTH_BOUNDS = "floor", "ceiling", "floor and ceiling"
UNINFORMATIVE = {FLOOR: "uninformative here (floor)", CEILING: "uninformative here (ceiling)",
                 BOTH_BOUNDS: "uninformative here (one arm at the floor, one at the ceiling)"}
DECIDED = (SUPPORTED, CONTRADICTED, DIRECTION_ONLY)


@lru_cache(maxsize=64)
def _sign_matrix(n: int) -> np.ndarray:
    """Every sign pattern of n paired differences (n <= EXACT_MAX), else N_SIGNS random ones (seeded).
    Cached: an interval's search asks for the same n many times."""
    if n <= EXACT_MAX:
        grid = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        return 1.0 - 2.0 * grid
    return np.random.default_rng(SEED).choice([-1.0, 1.0], size=(N_SIGNS, n))


def _tail(stat: np.ndarray, observed: float, scale: float, alternative: str, exact: bool) -> float:
    """The share of sign patterns whose statistic is as extreme as the observed one."""
    tol = 1e-9 * max(1.0, scale)
    if alternative == "two-sided":
        hits = np.abs(stat) >= abs(observed) - tol
    elif alternative == "greater":
        hits = stat >= observed - tol
    elif alternative == "less":
        hits = stat <= observed + tol
    else:
        raise ValueError(f"alternative={alternative!r}: use two-sided, greater or less")
    return float(hits.mean()) if exact else float((1 + hits.sum()) / (1 + len(stat)))


def _signed(d, delta: float = 0.0) -> np.ndarray:
    """The differences from delta that carry a sign (those equal to delta drop out)."""
    x = np.asarray(d, dtype=float) - delta
    return x[np.abs(x) > 1e-12]


def _one_size(x: np.ndarray) -> bool:
    return bool(np.allclose(np.abs(x), abs(x[0])))


def signflip_method(d, delta: float = 0.0) -> str:
    """How `signflip_p` computes its p on these differences: exact (a binomial tail where they share one
    size, every sign pattern up to EXACT_MAX), else Monte Carlo."""
    x = _signed(d, delta)
    return SIGNFLIP_EXACT if len(x) <= EXACT_MAX or _one_size(x) else SIGNFLIP_MC


def signflip_p(d, delta: float = 0.0, alternative: str = "two-sided") -> float:
    """p of the paired sign-flip test that the differences `d` are symmetric about `delta` (their mean
    is delta). Differences equal to delta carry no sign and are left out. Where the rest share one
    magnitude (0/1 outcomes at delta = 0: the discordant pairs) the test is the sign test, computed
    exactly at any n as a binomial tail: the exact McNemar test. Otherwise it is exact up to EXACT_MAX
    non-zero differences, else a fixed-seed Monte Carlo estimate with the observed pattern counted
    ((1 + hits) / (1 + N_SIGNS)), so it is never 0."""
    x = _signed(d, delta)
    if len(x) == 0:
        return 1.0
    if _one_size(x):  # |S| >= |observed| is |2K - n| >= |2k - n|, K ~ binomial(n, 1/2)
        if alternative not in ("two-sided", "greater", "less"):
            raise ValueError(f"alternative={alternative!r}: use two-sided, greater or less")
        return float(_st.binomtest(int((x > 0).sum()), len(x), 0.5, alternative).pvalue)
    return _tail(_sign_matrix(len(x)) @ x, x.sum(), np.abs(x).sum(), alternative, len(x) <= EXACT_MAX)


def signflip_interval(d, alpha: float = ALPHA) -> tuple[float, float]:
    """The differences delta that the two-sided sign-flip test at `alpha` does not reject, by bisection
    from the mean outwards. Each end is searched on the side of zero the test at zero decides, so zero
    lies inside exactly when p(0) > alpha. Outside [min(d), max(d)] every difference has one sign and
    the test rejects whenever it can (n >= 6 at 5 %); where it cannot, the interval is the data's range."""
    d = np.asarray(d, dtype=float)
    mean = float(d.mean())
    if np.all(d == d[0]):
        return mean, mean
    signs = _sign_matrix(len(d))
    signed, counts = signs @ d, signs.sum(axis=1)  # S (d - delta) = S d - delta S 1: one product for all deltas

    def accepts(delta: float) -> bool:
        if np.any(np.abs(d - delta) <= 1e-12):  # a difference equal to delta drops out: the general test
            return signflip_p(d, delta) > alpha
        x = d - delta
        return _tail(signed - delta * counts, x.sum(), np.abs(x).sum(), "two-sided", len(d) <= EXACT_MAX) > alpha

    zero_in = signflip_p(d, 0.0) > alpha

    def end(outer: float) -> float:
        inner = mean  # the test at the mean never rejects (its statistic is 0)
        if min(inner, outer) <= 0 <= max(inner, outer) and inner != 0:
            if zero_in:
                inner = 0.0  # the end lies beyond zero
            else:
                outer = 0.0  # the end lies between zero and the mean
        if accepts(outer):
            return outer
        for _ in range(40):  # 2**-40 of the data's range
            mid = (inner + outer) / 2
            if accepts(mid):
                inner = mid
            else:
                outer = mid
        return inner

    low, high = end(float(d.min())), end(float(d.max()))
    return float(low), float(high)


def welch_log(a, b, alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """Independent repetitions of two timings: Welch's t-test on log seconds and the interval it
    inverts, as (log ratio of geometric means, low, high, two-sided p)."""
    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    res = _st.ttest_ind(la, lb, equal_var=False)
    ci = res.confidence_interval(1 - alpha)
    return float(la.mean() - lb.mean()), float(ci.low), float(ci.high), float(res.pvalue)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (familywise error at the level they are compared with)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def n_per_arm(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Repetitions per arm for a two-sample test of a mean difference `effect` (normal approximation)."""
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return int(math.ceil(2 * (z * sd / abs(effect)) ** 2)) if effect else 0


def n_equivalence(margin: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Paired units for two one-sided tests to show equivalence within `margin` when the true
    difference is 0 (normal approximation)."""
    z = _st.norm.ppf(1 - alpha) + _st.norm.ppf(1 - (1 - power) / 2)
    return int(math.ceil((z * sd / margin) ** 2)) if margin else 0


@dataclass
class Comparison:
    claim: str  # the plan's comparison id (K1-rag-vs-dsf ...): the claim id and a suffix
    a: str  # condition names, as in the results file's outcomes
    b: str
    n: int  # paired units (for welch-log: repetitions of the smaller arm)
    diff: float  # mean(a) - mean(b); for welch-log the log of the ratio of geometric means
    ci_low: float  # the interval the test inverts, at `level`
    ci_high: float
    p: float  # raw p of the test the plan declares (an equivalence claim: the two one-sided tests)
    verdict: str  # raw: at alpha, before the family's adjustment (chapter 7 adjusts)
    expect: str = "greater"
    kind: str = "binary"
    margin: float = 0.0
    mean_a: float = 0.0
    mean_b: float = 0.0
    mde: float = 0.0  # smallest effect this n detects at 80 % power (two-sided, unadjusted)
    n_needed: int = 0  # units that would detect the smallest effect of interest at 80 % power, adjusted level
    unit: str = "questions"
    test: str = "paired"
    level: float = 0.95  # confidence of the interval (0.90 for an equivalence claim: two one-sided tests)
    sesoi: float = 0.0  # the plan's smallest effect of interest
    role: str = "primary"
    bound: str | None = None  # floor | ceiling | None: an arm with less room than the smallest effect
    size_vs_stated: str | None = None  # smaller | consistent | larger than the source's stated effect
    stated: list | None = None  # that effect, as a difference of means
    p_adjusted: float | None = None  # the family's Holm-adjusted p (set by chapter 7)
    verdict_raw: str | None = None  # the verdict at the raw p, where the adjustment changed it
    n_planned: int | None = None
    p_method: str | None = None  # how p was computed (EXACT_MCNEMAR, SIGNFLIP_EXACT, SIGNFLIP_MC, TANGO_TOST, WELCH)
    family_size: int | None = None  # the family's size that n_needed's level divides alpha by
    seeds: list | None = None  # a seeded arm's: the same comparison on each training seed's outcomes (raw; ragft.plan)

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self, a_label: str | None = None, b_label: str | None = None, pct: bool = True) -> str:
        """The comparison as a sentence for the prose (plain text: glue renders no markup)."""
        return sentence(self.as_dict(), a_label, b_label, pct)


RATE = "rate"  # a seeded arm's outcome: the mean of its seeds' 0/1 outcomes, a rate (tested as continuous)


def score_kind(c: dict) -> str:
    """What a comparison's difference is a difference of, for reading it: "rate" where a continuous
    test compares the seed means of right/wrong outcomes (each seed's own comparison binary), else
    its kind (binary, continuous, computed)."""
    seeds = c.get("seeds") or []
    if c.get("kind") == "continuous" and seeds and all(s.get("kind") == "binary" for s in seeds):
        return RATE
    return c.get("kind", "binary")


def sentence(c: dict, a_label: str | None = None, b_label: str | None = None, pct: bool = True) -> str:
    """A comparison (as stored) as a sentence: its verdict, difference, interval, p (raw, and adjusted
    once the family is), n, and for an undecided one the n that would decide it."""
    a_label, b_label = a_label or c["a"], b_label or c["b"]
    level = f"{100 * c.get('level', 0.95):.0f} %"
    if c.get("test") == "check":  # equal by construction: the measured difference, no test
        return (f"{c['verdict']}: {a_label} minus {b_label}: {c['diff']:+.3g} (single measurements ranged "
                f"{c['ci_low']:+.3g} to {c['ci_high']:+.3g}, {c['n']} {c['unit']})")
    if c.get("test") == "welch-log":
        ratio = lambda x: f"{math.exp(x):.3g}x"  # noqa: E731
        stat = (f"{a_label} over {b_label}: {ratio(c['diff'])} ({level} CI {ratio(c['ci_low'])} to {ratio(c['ci_high'])}, "
                f"p = {c['p']:.2g}, {c['n']} independent {c['unit']} per arm")
    else:
        unit = (lambda x: f"{100 * x:+.0f} points") if pct else (lambda x: f"{x:+.3g}")  # noqa: E731
        span = (lambda x: f"{100 * x:+.0f}") if pct else (lambda x: f"{x:+.3g}")  # noqa: E731
        stat = (f"{a_label} minus {b_label}: {unit(c['diff'])} ({level} CI {span(c['ci_low'])} to "
                f"{span(c['ci_high'])}, p = {c['p']:.2g}, n = {c['n']} paired {c['unit']}")
    if c.get("p_method") == SIGNFLIP_MC:
        stat += " (Monte Carlo)"
    if c.get("p_adjusted") is not None:
        stat += f", Holm-adjusted p = {c['p_adjusted']:.2g})"
    else:
        stat += ")"
    verdict = c["verdict"]
    if c.get("role") == "secondary":
        verdict = f"exploratory, {verdict}"
    if c["verdict"] == NOT_DECIDED and c.get("n_needed"):
        return f"{verdict}: {stat}; about {c['n_needed']:,} would detect the smallest effect of interest"
    return f"{verdict}: {stat}"


def _bound(spec, mean_a: float, mean_b: float) -> str | None:
    """Floor or ceiling: the lower arm's room below the ceiling, or the higher arm's height above the
    floor, is smaller than the smallest effect of interest, so no difference that matters could show.
    Floor and ceiling: one arm within that effect of each bound (100 % against 0 %): the metric is
    saturated at both ends, so it cannot say how large the difference is, only that the task is
    trivial for one arm and impossible for the other."""
    low, high = min(mean_a, mean_b), max(mean_a, mean_b)
    if spec.ceiling is not None and spec.ceiling - low < spec.sesoi:
        return CEILING
    if spec.floor is not None and high - spec.floor < spec.sesoi:
        return FLOOR
    if (spec.floor is not None and spec.ceiling is not None and low - spec.floor < spec.sesoi
            and spec.ceiling - high < spec.sesoi):
        return BOTH_BOUNDS
    return None


def size_vs_stated(low: float, high: float, stated) -> str | None:
    """The measured interval against the source's stated difference [s_low, s_high]."""
    if not stated:
        return None
    if high < stated[0]:
        return "smaller"
    if low > stated[1]:
        return "larger"
    return "consistent"


def compare(spec, a_name: str, a: dict, b_name: str, b: dict, alpha: float = ALPHA, family_size: int = 1,
            stated=None, power: float = POWER) -> Comparison:
    """One planned comparison (a ragft.plan.Planned) of two recorded conditions, with its raw verdict:

    - the test the plan declares: `paired` (sign-flip on per-unit differences; exact McNemar on 0/1
      outcomes) or `welch-log` (independent timed repetitions, Welch's t on log seconds);
    - the interval that test inverts (95 %; 90 % for an equivalence claim, whose two one-sided tests
      at 5 % reject exactly when it lies inside the margin);
    - the bound: an arm at the floor or ceiling of the metric by less than the smallest effect of
      interest makes the comparison uninformative, whatever p says;
    - n_needed: units that would detect the smallest effect of interest with `power` (80 %) at the
      family's strictest Holm level (alpha / family_size).
    """
    if spec.test == "welch-log":
        va = np.array([float(v) for v in a.values()])
        vb = np.array([float(v) for v in b.values()])
        if min(len(va), len(vb)) < 2 or (va <= 0).any() or (vb <= 0).any():
            raise ValueError(f"{spec.id}: welch-log needs at least 2 positive timings per arm")
        n = min(len(va), len(vb))
        diff, low, high, p = welch_log(va, vb, alpha)  # the plan declares no equivalence on timings
        sd = float(np.sqrt((np.var(np.log(va), ddof=1) + np.var(np.log(vb), ddof=1)) / 2)) or PLANNING_SD
        mde = math.sqrt(2) * min_detectable_effect(n, sd)
        need = n_per_arm(spec.sesoi, sd, alpha / family_size, power)
        kind, p_method = "continuous", WELCH
    else:
        _, va, vb = _paired(a, b)
        kind = spec.kind
        if kind == "binary" and not set(np.unique(np.concatenate([va, vb]))) <= {0.0, 1.0}:
            raise ValueError(f"{spec.id}: the plan declares 0/1 outcomes; {a_name!r} or {b_name!r} has other values")
        n, d = len(va), va - vb
        diff = float(d.mean())
        level_alpha = alpha if spec.expect != "equal" else 2 * alpha
        if kind == "binary":  # exact McNemar p; Tango's score interval and, for equivalence, its one-sided tests
            nb, nc = int((d > 0).sum()), int((d < 0).sum())
            low, high = tango_interval(nb, nc, n, level_alpha)
            one_sided = lambda delta, alt: tango_p(nb, nc, n, delta, alt)  # noqa: E731
            p_method = EXACT_MCNEMAR
        else:
            low, high = signflip_interval(d, level_alpha) if n > 1 else (diff, diff)
            one_sided = lambda delta, alt: signflip_p(d, delta, alt)  # noqa: E731
            p_method = signflip_method(d)
        p = signflip_p(d)
        if spec.expect == "equal":  # two one-sided tests inside the margin; one outside it, where the data sit
            m = spec.margin
            p = (max(one_sided(-m, "greater"), one_sided(m, "less")) if abs(diff) <= m
                 else one_sided(m, "greater") if diff > 0 else one_sided(-m, "less"))
            p_method = TANGO_TOST if kind == "binary" else p_method
        sd = _sd(d, kind)
        mde = min_detectable_effect(n, sd)
        need = (n_equivalence(spec.margin, sd, alpha / family_size, power) if spec.expect == "equal"
                else n_needed(spec.sesoi, sd, alpha / family_size, power))
    mean_a, mean_b = float(np.mean(va)), float(np.mean(vb))
    c = Comparison(spec.id, a_name, b_name, n, diff, low, high, p, NOT_DECIDED, spec.expect, kind, spec.margin,
                   mean_a, mean_b, mde, need, spec.unit, spec.test, 1 - (2 * alpha if spec.expect == "equal" else alpha),
                   spec.sesoi, spec.role, _bound(spec, mean_a, mean_b) if spec.test == "paired" else None,
                   size_vs_stated(low, high, stated), list(stated) if stated else None, None, None, spec.n,
                   p_method, family_size)
    c.verdict = decide(c.as_dict(), p, alpha)
    return c


NOT_FIT = "not decided: an arm did not reach its fitness"


def decide(c: dict, p: float, alpha: float = ALPHA) -> str:
    """A comparison's verdict at p (raw, or adjusted by its family): an arm that missed its declared
    fitness first (`unfit`, set by the family), then a bound; then the test, direction and size: a
    difference in the claimed direction is "supported" when its interval clears the smallest effect
    of interest (the claim's stated size, or the plan's rule for the metric), else "direction
    supported, size not shown". An equivalence claim's size is its margin (the 90 % interval inside
    it); a contradiction needs only the sign."""
    if c.get("unfit"):
        return NOT_FIT
    if c.get("bound"):
        return UNINFORMATIVE[c["bound"]]
    if p >= alpha:
        return NOT_DECIDED
    if c["expect"] == "equal":
        return SUPPORTED if abs(c["diff"]) <= c["margin"] else CONTRADICTED
    sign = 1 if c["expect"] == "greater" else -1
    if sign * c["diff"] <= 0:
        return CONTRADICTED
    near = c["ci_low"] if sign > 0 else -c["ci_high"]  # the interval's end nearer zero, in the claimed direction
    return SUPPORTED if near >= (c.get("sesoi") or 0.0) - 1e-12 else DIRECTION_ONLY


def _paired(a: dict, b: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise TypeError("a comparison takes per-question outcomes: {question_id: score} for each condition")
    ids = [q for q in a if q in b]
    if not ids:
        raise ValueError("the two conditions share no question ids: a paired comparison needs the same questions")
    va = np.array([float(a[q]) for q in ids])
    vb = np.array([float(b[q]) for q in ids])
    if np.isnan(va).any() or np.isnan(vb).any():
        raise ValueError("outcomes must be numbers, not NaN")
    return ids, va, vb
