"""Intervals, paired tests, minimum detectable effects and the verdict rule, on scipy.stats.

Every comparison the book states goes through `compare`: two conditions scored on the same questions
(per-question outcomes, `{question_id: score}`), a paired test, an interval on the difference and a
verdict that a sentence can carry:

  supported                the difference is significant (p < alpha) in the claimed direction
  contradicted             significant in the other direction, or an equivalence claim whose
                           interval lies wholly outside its margin
  inconclusive at this n   neither; the comparison says how many paired questions would detect
                           the claimed effect (or the minimum detectable effect at this n)

Binary outcomes (right or wrong) get the exact McNemar test (a binomial test on the discordant
pairs); continuous ones (F1, log-likelihoods, perplexities) a paired permutation test. The interval
on the mean difference is a paired bootstrap (fixed seed), so reruns give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive at this n"


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
    """Two-sided exact McNemar p-value for paired binary outcomes (1 = right)."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(_st.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_permutation_p(a, b) -> float:
    """Two-sided p-value of a paired permutation (sign-flip) test on the mean difference; exact
    when the n allows it, else a fixed-seed Monte Carlo estimate."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.all(d == 0):
        return 1.0
    res = _st.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=N_RESAMPLES,
                               alternative="two-sided", rng=np.random.default_rng(SEED))
    return float(res.pvalue)


def diff_interval(a, b, confidence: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval on mean(a - b). Percentile, not BCa: differences of binary outcomes
    are mostly ties, where BCa's corrections swing wildly."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2 or np.all(d == d[0]):
        return (float(d.mean()), float(d.mean())) if len(d) else (float("nan"), float("nan"))
    res = _st.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES,
                        method="percentile", rng=np.random.default_rng(SEED))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def auroc(positives, negatives) -> float:
    """Area under the ROC curve of a score meant to be higher for `positives` (e.g. a refusal score
    on unanswerable questions) than for `negatives` (answerable ones): the probability that a random
    positive outscores a random negative, ties counting half (the Mann-Whitney U statistic)."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs both kinds of questions: {len(pos)} positives, {len(neg)} negatives")
    return float(_st.mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def recall_at_fpr(positives, negatives, max_fpr: float = 0.05) -> tuple[float, float]:
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


@dataclass
class Comparison:
    claim: str  # the claim id of CLAIMS.md it tests (K1, F3, ...), with a suffix when a claim has several
    a: str  # condition names, as in the results file's outcomes
    b: str
    n: int  # paired questions
    diff: float  # mean(a) - mean(b)
    ci_low: float
    ci_high: float
    p: float
    verdict: str
    expect: str = "greater"  # the claim's direction: a greater | less than b | equal within margin
    kind: str = "binary"
    margin: float = 0.0  # equivalence margin for expect="equal"
    mean_a: float = 0.0
    mean_b: float = 0.0
    mde: float = 0.0  # minimum detectable effect at 80 % power for this n
    n_for_effect: int = 0  # paired questions that would detect the observed difference (or the margin)
    unit: str = "questions"  # what was paired (questions; segments of a text ...)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def decided(self) -> bool:
        return self.verdict != INCONCLUSIVE

    def sentence(self, a_label: str | None = None, b_label: str | None = None, pct: bool = True) -> str:
        """The comparison as a sentence for the prose (plain text: glue renders no markup): the
        verdict, the difference, its interval, p and n, and for an inconclusive one what this n can
        detect and the n that would decide it."""
        a_label, b_label = a_label or self.a, b_label or self.b
        unit = (lambda x: f"{100 * x:+.0f} points") if pct else (lambda x: f"{x:+.3g}")
        span = (lambda x: f"{100 * x:+.0f}") if pct else (lambda x: f"{x:+.3g}")
        stat = (f"{a_label} minus {b_label}: {unit(self.diff)} (95 % CI {span(self.ci_low)} to "
                f"{span(self.ci_high)}, p = {self.p:.2g}, n = {self.n} paired {self.unit})")
        if self.verdict != INCONCLUSIVE:
            return f"{self.verdict}: {stat}"
        if self.kind == "binary" and self.mde >= 1:
            power = f"at this n no difference is detectable with {POWER:.0%} power"
        else:
            power = f"the smallest effect this n detects is {f'{100 * self.mde:.0f} points' if pct else f'{self.mde:.3g}'}"
        need = (f"; about {self.n_for_effect:,} paired {self.unit} would detect a difference this size"
                if self.n_for_effect else "")
        return f"{INCONCLUSIVE}: {stat}; {power}{need}"


def _paired(a: dict, b: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise TypeError("compare takes per-question outcomes: {question_id: score} for each condition")
    ids = [q for q in a if q in b]
    if not ids:
        raise ValueError("the two conditions share no question ids: a paired comparison needs the same questions")
    va = np.array([float(a[q]) for q in ids])
    vb = np.array([float(b[q]) for q in ids])
    if np.isnan(va).any() or np.isnan(vb).any():
        raise ValueError("outcomes must be numbers, not NaN")
    return ids, va, vb


def compare(claim: str, a_name: str, a: dict, b_name: str, b: dict, expect: str = "greater",
            kind: str | None = None, margin: float = 0.0, alpha: float = ALPHA, unit: str = "questions") -> Comparison:
    """Compare two conditions on the questions both were asked, and give the claim its verdict.

    expect: "greater" (the claim says a beats b), "less" (a is below b), or "equal" (a matches b
    within `margin`: supported when the whole interval lies inside it, contradicted when it lies
    wholly outside). kind: "binary" (0/1 outcomes, exact McNemar) or "continuous" (permutation
    test); None infers it from the values.
    """
    if expect not in DIRECTIONS:
        raise ValueError(f"expect={expect!r} is not allowed: use one of {list(DIRECTIONS)}")
    _, va, vb = _paired(a, b)
    if kind is None:
        kind = "binary" if set(np.unique(np.concatenate([va, vb]))) <= {0.0, 1.0} else "continuous"
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed: use one of {list(KINDS)}")
    if kind == "binary" and not set(np.unique(np.concatenate([va, vb]))) <= {0.0, 1.0}:
        raise ValueError("kind='binary' needs outcomes of 0 or 1")
    n = len(va)
    d = va - vb
    diff = float(d.mean())
    p = mcnemar_exact(va, vb) if kind == "binary" else paired_permutation_p(va, vb)
    low, high = diff_interval(va, vb) if n > 1 else (diff, diff)
    sd = _sd(d, kind)
    if expect == "equal":
        if -margin <= low and high <= margin:
            verdict = SUPPORTED
        elif low > margin or high < -margin:
            verdict = CONTRADICTED
        else:
            verdict = INCONCLUSIVE
        # the interval must shrink inside the margin (|diff| < margin) or wholly past it (|diff| > margin)
        need = n_needed(max(abs(margin - abs(diff)), 1e-3), sd) if verdict == INCONCLUSIVE else 0
    else:
        sign = 1 if expect == "greater" else -1
        if p < alpha and diff != 0:
            verdict = SUPPORTED if sign * diff > 0 else CONTRADICTED
        else:
            verdict = INCONCLUSIVE
        need = n_needed(diff, sd) if verdict == INCONCLUSIVE and diff != 0 else 0
    return Comparison(claim, a_name, b_name, n, diff, low, high, p, verdict, expect, kind, margin,
                      float(va.mean()), float(vb.mean()), min_detectable_effect(n, sd), need, unit)
