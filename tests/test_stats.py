"""The evidence layer: intervals, paired tests, power arithmetic and the verdict rule."""

import numpy as np
import pytest

from ragft import stats


def _outcomes(values):
    return {f"q{i}": v for i, v in enumerate(values)}


def test_wilson_interval_matches_the_textbook_value():
    low, high = stats.wilson_interval(8, 16)  # p = 0.5, n = 16: 0.5 +- 0.22 (Wilson)
    assert low == pytest.approx(0.280, abs=1e-3) and high == pytest.approx(0.720, abs=1e-3)
    assert np.isnan(stats.wilson_interval(0, 0)[0])


def test_exact_mcnemar_counts_only_discordant_pairs():
    a, b = [1] * 10 + [0] * 6, [1] * 10 + [0] * 6
    assert stats.mcnemar_exact(a, b) == 1.0
    # 8 discordant pairs, all favouring a: two-sided binomial p = 2 / 2**8
    a, b = [1] * 8 + [0] * 8, [0] * 8 + [0] * 8
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 / 2**8)


def test_a_planted_large_difference_is_supported():
    a = _outcomes([1] * 56 + [0] * 8)
    b = _outcomes([1] * 16 + [0] * 48)
    c = stats.compare("K1", "rag", a, "ft", b, expect="greater")
    assert c.verdict == stats.SUPPORTED and c.n == 64 and c.diff == pytest.approx(40 / 64)
    assert c.ci_low > 0 and c.p < 1e-6
    assert stats.compare("K1", "rag", a, "ft", b, expect="less").verdict == stats.CONTRADICTED


def test_a_one_question_difference_at_n16_is_inconclusive():
    a = _outcomes([1] * 9 + [0] * 7)
    b = _outcomes([1] * 8 + [0] * 8)
    c = stats.compare("K1", "rag", a, "ft", b)
    assert c.verdict == stats.INCONCLUSIVE and c.p == 1.0 and c.diff == pytest.approx(1 / 16)
    assert c.mde > 0.3  # at n = 16 only an effect of more than 30 points is detectable
    assert c.n_for_effect > 16
    assert "inconclusive at this n" in c.sentence() and "n = 16" in c.sentence()


def test_continuous_scores_use_a_paired_permutation_test():
    rng = np.random.default_rng(0)
    x = rng.random(40)
    c = stats.compare("F", "better", _outcomes(x + 0.2), "worse", _outcomes(x), kind="continuous")
    assert c.kind == "continuous" and c.verdict == stats.SUPPORTED
    assert c.ci_low == pytest.approx(0.2) and c.ci_high == pytest.approx(0.2)
    noisy = stats.compare("F", "a", _outcomes(x), "b", _outcomes(rng.permutation(x)), kind="continuous")
    assert noisy.verdict == stats.INCONCLUSIVE


def test_equivalence_claims_need_the_whole_interval_inside_the_margin():
    same = _outcomes([1] * 60 + [0] * 40)
    assert stats.compare("T1", "lora", same, "full", same, expect="equal", margin=0.05).verdict == stats.SUPPORTED
    far = stats.compare("T1", "lora", _outcomes([0] * 100), "full", same, expect="equal", margin=0.05)
    assert far.verdict == stats.CONTRADICTED
    small = stats.compare("T1", "lora", _outcomes([1, 0, 1, 0]), "full", _outcomes([1, 1, 0, 0]),
                          expect="equal", margin=0.05)
    assert small.verdict == stats.INCONCLUSIVE
    # outside the margin but the interval still reaches it: the n that would put it wholly outside,
    # sized by the distance past the margin (was sized by 0.001, and promised hundreds of thousands)
    past = stats.compare("T1", "lora", _outcomes([0] * 3 + [1] * 13), "full", _outcomes([1] * 16),
                         expect="equal", margin=0.04, kind="continuous")
    assert past.verdict == stats.INCONCLUSIVE and past.diff < -0.04
    assert past.n_for_effect == stats.n_needed(abs(past.diff) - 0.04, stats._sd(
        [-1] * 3 + [0] * 13, "continuous")) < 1000


def test_comparison_uses_only_shared_questions_and_refuses_bad_input():
    c = stats.compare("X", "a", {"q1": 1, "q2": 0, "q3": 1}, "b", {"q2": 1, "q3": 1, "q9": 0})
    assert c.n == 2
    with pytest.raises(ValueError, match="share no question ids"):
        stats.compare("X", "a", {"q1": 1}, "b", {"q2": 1})
    with pytest.raises(ValueError, match="expect"):
        stats.compare("X", "a", {"q1": 1}, "b", {"q1": 1}, expect="bigger")
    with pytest.raises(ValueError, match="0 or 1"):
        stats.compare("X", "a", {"q1": 0.5}, "b", {"q1": 1}, kind="binary")
    with pytest.raises(TypeError):
        stats.compare("X", "a", [1, 0], "b", [0, 1])


def test_power_arithmetic():
    # a 20-point effect with sd 0.5 needs (2.80 * 0.5 / 0.2)^2 = 49.1 -> 50 paired questions
    assert stats.n_needed(0.2) == 50
    assert stats.min_detectable_effect(50) == pytest.approx(0.198, abs=1e-3)
    assert stats.min_detectable_effect(16) > stats.min_detectable_effect(64)


def test_results_are_deterministic():
    a, b = _outcomes([1, 0, 1, 1, 0, 1, 1, 1]), _outcomes([0, 0, 1, 0, 0, 1, 0, 1])
    assert stats.compare("X", "a", a, "b", b).as_dict() == stats.compare("X", "a", a, "b", b).as_dict()
