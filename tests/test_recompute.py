"""Every published comparison recomputed from its per-question outcomes by a second implementation on
scipy alone (nothing of ragft.stats): exact McNemar p from the binomial test on the discordant pairs,
Tango's score interval from its own root-finding, Welch's t on log seconds, the sign-flip p (exact
where it enumerates, else within Monte Carlo error), and Holm's adjustment of the family."""

import json
import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as st

from conftest import ROOT

PUBLISHED = ROOT / "experiments" / "results" / "cpu"
CHAPTERS = sorted(p.name for p in PUBLISHED.glob("0[1-8]_*.json") if p.name != "07_verdict.json")


def _paired(doc, c):
    a, b = doc["outcomes"][c["a"]], doc["outcomes"][c["b"]]
    ids = [q for q in a if q in b]
    return np.array([a[q] for q in ids]), np.array([b[q] for q in ids])


def _tango(b: int, c: int, n: int, level: float) -> tuple[float, float]:
    """Tango (1998): the differences whose score statistic lies within the normal quantile."""
    z = st.norm.ppf(1 - (1 - level) / 2)

    def score(d):
        A, B, C = 2 * n, -b - c + (2 * n - b + c) * d, -c * d * (1 - d)
        q = (math.sqrt(max(B * B - 4 * A * C, 0.0)) - B) / (2 * A)
        v = n * (2 * q + d * (1 - d))
        return (b - c - n * d) / math.sqrt(v) if v > 0 else (0.0 if abs(b - c - n * d) < 1e-12 else math.copysign(math.inf, b - c - n * d))

    est, e = (b - c) / n, 1e-12
    low = -1.0 if score(-1 + e) <= z else optimize.brentq(lambda d: score(d) - z, -1 + e, est, xtol=1e-12)
    high = 1.0 if score(1 - e) >= -z else optimize.brentq(lambda d: score(d) + z, est, 1 - e, xtol=1e-12)
    return low, high


def _cases():
    for name in CHAPTERS:
        doc = json.loads((PUBLISHED / name).read_text())
        for c in doc.get("comparisons") or []:
            if c.get("kind") != "computed" and c.get("test") in ("paired", "welch-log"):
                yield pytest.param(doc, c, id=f"{name[:2]}:{c['claim']}")


@pytest.mark.parametrize("doc,c", list(_cases()))
def test_a_published_comparison_is_what_scipy_gives(doc, c):
    if c["test"] == "welch-log":
        la = np.log(list(doc["outcomes"][c["a"]].values()))
        lb = np.log(list(doc["outcomes"][c["b"]].values()))
        res = st.ttest_ind(la, lb, equal_var=False)
        ci = res.confidence_interval(c["level"])
        assert c["p"] == pytest.approx(res.pvalue, rel=1e-9)
        assert (c["ci_low"], c["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        return
    va, vb = _paired(doc, c)
    d = va - vb
    assert c["n"] == len(d) and c["diff"] == pytest.approx(d.mean())
    if c["kind"] == "binary" and c["expect"] != "equal":
        nb, nc = int((d > 0).sum()), int((d < 0).sum())
        exact = st.binomtest(nb, nb + nc, 0.5).pvalue if nb + nc else 1.0
        assert c["p"] == pytest.approx(exact, rel=1e-9, abs=1e-300)  # never a Monte Carlo estimate
        assert (c["ci_low"], c["ci_high"]) == pytest.approx(_tango(nb, nc, len(d), c["level"]), abs=1e-7)
        assert c["ci_high"] > c["ci_low"]  # an interval never collapses to a point
    elif c["kind"] == "continuous" and c["expect"] != "equal":
        x = d[np.abs(d) > 1e-12]
        if len(x) <= 16:  # every sign pattern: the exact permutation distribution
            res = st.permutation_test((x,), np.sum, permutation_type="samples", n_resamples=np.inf)
            assert c["p"] == pytest.approx(res.pvalue, rel=1e-9)
        else:  # Monte Carlo on both sides: within five standard errors of a 99,999-draw estimate (or both at the floor)
            res = st.permutation_test((x,), np.sum, permutation_type="samples", n_resamples=99_999,
                                      rng=np.random.default_rng(7))
            se = math.sqrt(max(res.pvalue * (1 - res.pvalue), 1e-5) / 19_999)
            assert abs(c["p"] - res.pvalue) <= 5 * se + 1e-4


def test_the_family_is_holm_adjusted():
    # Holm by hand (scipy has no Holm): the k-th smallest p times (m - k), kept non-decreasing
    family = [c for c in json.loads((PUBLISHED / "07_verdict.json").read_text())["comparisons"]
              if c.get("p_adjusted") is not None]
    ps = [c["p"] for c in family]
    m, order, running, holm = len(ps), sorted(range(len(ps)), key=lambda i: ps[i]), 0.0, [0.0] * len(ps)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        holm[i] = running
    assert m >= 20 and [c["p_adjusted"] for c in family] == pytest.approx(holm, rel=1e-12)
