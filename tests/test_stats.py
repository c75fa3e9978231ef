"""The evidence layer: intervals, tests, power arithmetic and the verdict of one planned comparison,
on tiny planted outcomes whose answers can be worked out by hand."""

import math

import numpy as np
import pytest

from ragft import stats
from ragft.plan import Planned


def _outcomes(values):
    return {f"q{i}": v for i, v in enumerate(values)}


def spec(**kw) -> Planned:
    """A planned comparison with the book's defaults for a rate: two-sided paired test, 10 points."""
    base = dict(id="K1-x", claim="K1", chapter="01_prompting", a="a", b="b", metric="right", unit="questions",
                test="paired", kind="binary", expect="greater", sesoi=0.10, sesoi_from="accuracy", n=64,
                floor=0.0, ceiling=1.0, role="primary")
    return Planned(**{**base, **kw})


def judge(a, b, **kw):
    return stats.compare(spec(**kw), "a", _outcomes(a), "b", _outcomes(b))


def test_wilson_interval_matches_the_textbook_value():
    low, high = stats.wilson_interval(8, 16)  # p = 0.5, n = 16: 0.5 +- 0.22 (Wilson)
    assert low == pytest.approx(0.280, abs=1e-3) and high == pytest.approx(0.720, abs=1e-3)
    assert np.isnan(stats.wilson_interval(0, 0)[0])


def test_the_sign_flip_test_on_0_1_outcomes_is_the_exact_mcnemar_test():
    a, b = [1] * 8 + [0] * 8, [0] * 8 + [0] * 8
    # 8 discordant pairs, all favouring a: two-sided binomial p = 2 / 2**8
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 / 2**8)
    assert stats.signflip_p(np.subtract(a, b)) == pytest.approx(2 / 2**8)
    # 5 against 1 among 40 pairs: binomial(6, 0.5), P(>= 5 or <= 1) = 14 / 64
    a, b = [1] * 5 + [0] + [1] * 34, [0] * 5 + [1] + [1] * 34
    assert stats.signflip_p(np.subtract(a, b)) == pytest.approx(stats.mcnemar_exact(a, b)) == pytest.approx(14 / 64)



def test_mcnemar_stays_exact_beyond_the_enumerated_sign_patterns():
    # 40 discordant pairs, 30 favouring a: more than EXACT_MAX, where a Monte Carlo estimate would stop
    # at 1 / (1 + N_SIGNS) = 5e-05; the binomial tail P(|2K - 40| >= 20) = 2 * P(K >= 30) is 0.00222
    a, b = [1] * 30 + [0] * 10 + [1] * 24, [0] * 30 + [1] * 10 + [1] * 24
    assert stats.EXACT_MAX < 40
    assert stats.signflip_p(np.subtract(a, b)) == pytest.approx(2 * sum(math.comb(40, k) for k in range(30, 41)) / 2**40)
    assert stats.signflip_p(np.subtract(a, b)) == pytest.approx(0.00222, abs=1e-5)
    # 60 discordant pairs all one way: 2 / 2**60, far below what 19,999 random sign patterns can show
    assert stats.signflip_p(np.array([1.0] * 60)) == pytest.approx(2 / 2**60)
    # one-sided: P(K >= 30) alone
    assert stats.signflip_p(np.subtract(a, b), alternative="greater") == pytest.approx(0.00111, abs=1e-5)


def test_a_planted_large_difference_is_supported_and_its_interval_excludes_zero():
    c = judge([1] * 56 + [0] * 8, [1] * 16 + [0] * 48)
    assert c.verdict == stats.SUPPORTED and c.n == 64 and c.diff == pytest.approx(40 / 64)
    assert 0 < c.ci_low < c.diff < c.ci_high and c.p < 1e-3
    assert judge([1] * 56 + [0] * 8, [1] * 16 + [0] * 48, expect="less").verdict == stats.CONTRADICTED


@pytest.mark.parametrize("seed", range(12))
def test_the_raw_interval_and_the_raw_p_never_disagree(seed):
    """The interval is the set of differences the test does not reject, searched on the side of zero
    that the test at zero decides: zero lies inside exactly when p > alpha."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 80))
    a = (rng.random(n) < rng.uniform(0.3, 0.9)).astype(float)
    b = (rng.random(n) < rng.uniform(0.3, 0.9)).astype(float)
    for kind, (x, y) in (("binary", (a, b)), ("continuous", (a * rng.random(n), b * rng.random(n)))):
        c = judge(list(x), list(y), kind=kind, floor=None, ceiling=None)
        assert (c.ci_low <= 0 <= c.ci_high) == (c.p >= stats.ALPHA), (kind, c.ci_low, c.ci_high, c.p)
        assert c.ci_low <= c.diff <= c.ci_high


def test_a_one_question_difference_at_n16_is_not_decided_and_sized_on_the_smallest_effect():
    c = judge([1] * 9 + [0] * 7, [1] * 8 + [0] * 8, n=16, floor=0.25)
    assert c.verdict == stats.NOT_DECIDED and c.p == 1.0 and c.diff == pytest.approx(1 / 16)
    assert c.mde > 0.3  # at n = 16 only an effect of more than 30 points is detectable
    # sized for the smallest effect of interest (10 points, sd floored at 0.5), not the observed 6:
    # ((1.96 + 0.84) * 0.5 / 0.10)^2 = 196.2 -> 197 at the unadjusted level
    assert c.n_needed == stats.n_needed(0.10, 0.5) == 197
    assert "not decided at this n" in c.sentence() and "n = 16" in c.sentence()


def test_questions_needed_are_sized_at_the_familys_strictest_holm_level():
    a, b = [1, 0] * 8, [0, 1] * 8
    one = stats.compare(spec(), "a", _outcomes(a), "b", _outcomes(b), family_size=1)
    forty = stats.compare(spec(), "a", _outcomes(a), "b", _outcomes(b), family_size=40)
    sd = stats._sd(np.subtract(a, b), "binary")  # every pair discordant: sd = 1.03
    assert one.n_needed == stats.n_needed(0.10, sd) and forty.n_needed == stats.n_needed(0.10, sd, 0.05 / 40)
    assert forty.n_needed > one.n_needed


def test_an_arm_at_the_ceiling_or_floor_is_uninformative_whatever_p_says():
    # 200 questions, 199 against 190: p = 0.004, but the lower arm has 5 points of room below 1.0,
    # less than the 10-point smallest effect of interest
    c = judge([1] * 199 + [0], [1] * 190 + [0] * 10, n=200)
    assert c.p < 0.01 and c.bound == stats.CEILING and c.verdict == stats.UNINFORMATIVE["ceiling"]
    # both arms near chance (0.25): the higher one is 4 points above the floor
    c = judge([1] * 29 + [0] * 71, [1] * 20 + [0] * 80, n=100, floor=0.25)
    assert c.bound == stats.FLOOR and c.verdict == stats.UNINFORMATIVE["floor"]
    assert judge([1] * 60 + [0] * 40, [1] * 40 + [0] * 60, n=100).bound is None


def test_size_against_the_stated_effect():
    assert stats.size_vs_stated(0.20, 0.40, (0.07, 0.11)) == "larger"
    assert stats.size_vs_stated(-0.05, 0.05, (0.07, 0.11)) == "smaller"
    assert stats.size_vs_stated(0.05, 0.30, (0.07, 0.11)) == "consistent"
    assert stats.size_vs_stated(0.0, 1.0, None) is None


def test_equivalence_claims_use_two_one_sided_tests_and_their_90_percent_interval():
    same = [1] * 60 + [0] * 40
    eq = dict(expect="equal", margin=0.05, sesoi=0.05, n=100)
    c = judge(same, same, **eq)
    assert c.verdict == stats.SUPPORTED and c.level == pytest.approx(0.90)
    far = judge([0] * 100, same, **eq)
    assert far.verdict == stats.CONTRADICTED and far.ci_high < -0.05
    small = judge([1, 0, 1, 0], [1, 1, 0, 0], **{**eq, "n": 4})
    assert small.verdict == stats.NOT_DECIDED
    # agreement: supported exactly when the 90 % interval lies inside the margin
    rng = np.random.default_rng(3)
    for _ in range(6):
        x, y = rng.random(30), rng.random(30)
        c = stats.compare(spec(kind="continuous", floor=None, ceiling=None, **{**eq, "n": 30}), "a", _outcomes(x + 0.5 * y),
                        "b", _outcomes(0.5 * y + x + rng.normal(0, 0.02, 30)))
        assert (c.verdict == stats.SUPPORTED) == (-0.05 <= c.ci_low and c.ci_high <= 0.05)


def test_timed_repetitions_use_welch_on_log_seconds():
    fast, slow = [0.10, 0.12, 0.11, 0.09, 0.10, 0.13], [2.0, 2.4, 2.2, 1.9, 2.1, 2.6]
    s = spec(id="U2-x", claim="U2", test="welch-log", kind="continuous", sesoi=math.log(1.25), n=6, floor=None, ceiling=None)
    c = stats.compare(s, "slow", _outcomes(slow), "fast", _outcomes(fast))
    assert c.verdict == stats.SUPPORTED and c.ci_low > 0 and math.exp(c.diff) == pytest.approx(20, rel=0.1)
    assert "x (95 % CI" in c.sentence() and "independent" in c.sentence()
    with pytest.raises(ValueError, match="positive"):
        stats.compare(s, "slow", _outcomes([0.0, 1.0]), "fast", _outcomes(fast))


def test_holm_adjusts_step_down():
    # sorted p 0.01, 0.02, 0.04 in a family of 3: 0.03, max(0.03, 0.04), max(0.04, 0.04)
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_comparison_uses_only_shared_questions_and_refuses_bad_input():
    c = stats.compare(spec(), "a", {"q1": 1, "q2": 0, "q3": 1}, "b", {"q2": 1, "q3": 1, "q9": 0})
    assert c.n == 2
    with pytest.raises(ValueError, match="share no question ids"):
        stats.compare(spec(), "a", {"q1": 1}, "b", {"q2": 1})
    with pytest.raises(ValueError, match="0/1"):
        stats.compare(spec(), "a", {"q1": 0.5}, "b", {"q1": 1})
    with pytest.raises(TypeError):
        stats.compare(spec(), "a", [1, 0], "b", [0, 1])


def test_power_arithmetic():
    # a 20-point effect with sd 0.5 needs (2.80 * 0.5 / 0.2)^2 = 49.1 -> 50 paired questions
    assert stats.n_needed(0.2) == 50
    assert stats.min_detectable_effect(50) == pytest.approx(0.198, abs=1e-3)
    assert stats.min_detectable_effect(16) > stats.min_detectable_effect(64)


def test_results_are_deterministic():
    a, b = [1, 0, 1, 1, 0, 1, 1, 1] * 4, [0, 0, 1, 0, 0, 1, 0, 1] * 4
    assert judge(a, b).as_dict() == judge(a, b).as_dict()


def test_tango_interval_matches_its_closed_forms_and_never_collapses():
    z2 = stats._st.norm.ppf(0.975) ** 2  # 3.8415
    # no discordant pair among 30: Z(delta) = -sqrt(n delta / (1 - delta)), so |Z| = z at delta = z^2 / (n + z^2)
    low, high = stats.tango_interval(0, 0, 30)
    assert high == pytest.approx(z2 / (30 + z2), abs=1e-9) == pytest.approx(0.1135, abs=1e-4) and low == pytest.approx(-high)
    # all 32 pairs discordant for a (100 % against 0 %): Z = sqrt(n (1 - delta) / (1 + delta)), so the lower
    # end is (n - z^2) / (n + z^2) = 0.786 and the upper end the bound itself
    low, high = stats.tango_interval(32, 0, 32)
    assert low == pytest.approx((32 - z2) / (32 + z2), abs=1e-9) and high == 1.0
    # at delta = 0 the statistic is McNemar's (b - c) / sqrt(b + c)
    assert stats.tango_z(5, 0, 64, 0.0) == pytest.approx(5 / math.sqrt(5))


def test_binary_comparisons_have_an_exact_p_and_a_score_interval_that_keeps_its_width():
    # 5 : 0 discordant pairs among 64: exact p = 2 / 2**5 = 0.0625 (not below 5 %), while the score interval
    # excludes zero; the verdict reads the exact p, the interval is never the point [-5/64, -5/64] or cut at 0
    c = judge([0] * 5 + [1] * 20 + [0] * 39, [1] * 25 + [0] * 39)  # 31 % against 39 %: clear of both bounds
    assert c.p == pytest.approx(0.0625) and c.p_method == stats.EXACT_MCNEMAR and c.verdict == stats.NOT_DECIDED
    assert c.ci_low < c.diff < c.ci_high < 0
    # no disagreement at all: an interval around zero of width about +-11 points at n = 30 (not [0, 0])
    c = judge([1] * 15 + [0] * 15, [1] * 15 + [0] * 15, floor=None, ceiling=None)
    assert c.p == 1.0 and c.ci_low == pytest.approx(-0.1135, abs=1e-4) and c.ci_high == pytest.approx(0.1135, abs=1e-4)


def test_monte_carlo_p_is_named_as_such():
    rng = np.random.default_rng(1)
    a, b = list(rng.normal(1.0, 1.0, 40)), list(rng.normal(0.0, 1.0, 40))
    c = judge(a, b, kind="continuous", floor=None, ceiling=None)
    assert c.p_method == stats.SIGNFLIP_MC and "(Monte Carlo)" in c.sentence()
    c = judge(a[:10], b[:10], kind="continuous", floor=None, ceiling=None)
    assert c.p_method == stats.SIGNFLIP_EXACT and "Monte Carlo" not in c.sentence()


def test_supported_needs_the_interval_to_clear_the_smallest_effect():
    # 40 against 0 discordant pairs among 400: +10 points, p tiny; Tango's lower end is about +7.3
    a, b = [1] * 40 + [0] * 360, [0] * 400
    assert judge(a, b, floor=None, ceiling=None, sesoi=0.05).verdict == stats.SUPPORTED
    assert judge(a, b, floor=None, ceiling=None, sesoi=0.10).verdict == stats.DIRECTION_ONLY
    # the same difference the other way round is contradicted whatever its size
    assert judge(b, a, floor=None, ceiling=None, sesoi=0.10).verdict == stats.CONTRADICTED


def test_one_arm_at_each_bound_is_uninformative():
    # 100 % against 0 % on 32: each arm within 15 points of its bound
    c = judge([1] * 32, [0] * 32, sesoi=0.15)
    assert c.bound == stats.BOTH_BOUNDS and c.verdict == stats.UNINFORMATIVE[stats.BOTH_BOUNDS]
    # 100 % against 70 %: only the higher arm at a bound, so the comparison stands
    assert judge([1] * 32, [1] * 22 + [0] * 10, sesoi=0.15).bound is None
