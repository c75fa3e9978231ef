"""The package's bottom floor: constants that several modules share, and the error a bad parameter
raises. It imports nothing of the package, so any module may import it (tests/test_imports.py checks
that the package's imports form no circle)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("smoke", "cpu", "gpu")
# the reply a reader gives when its sources do not hold the answer (refusal is scored on it)
REFUSAL_ANSWER = "I don't know"
DEPENDS = "depends"  # a claim whose verdict depends on the case (the ledger's word for it)


class ParamError(ValueError):
    """A chapter parameter with a value that is not allowed."""
