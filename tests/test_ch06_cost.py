"""Chapter 6's pieces on tiny records: what it prices from the other chapters' token counts."""

import pytest

from ragft.experiments.ch06_cost import mean_tokens


def test_a_seeded_arms_tokens_are_its_every_seeds_answers():
    """A seeded draw records a fine-tune's generated answers per training seed ("<condition> (seed k)");
    chapter 6 prices the condition on all of them: prompts 10, 20, 10, 20 -> 15; completions 2, 4, 6, 8 -> 5."""
    doc = {"chapter": "04_raft", "outcome_tokens": {"x (seed 1)": {"q1": [10, 2], "q2": [20, 4]},
                                                    "x (seed 2)": {"q1": [10, 6], "q2": [20, 8]},
                                                    "y": {"q1": [7, 3]}}}
    assert mean_tokens(doc, "x") == (15.0, 5.0)
    assert mean_tokens(doc, "y") == (7.0, 3.0)  # an arm of one run: its own
    with pytest.raises(KeyError, match="recorded no tokens for 'z'"):
        mean_tokens(doc, "z")
