"""The package's bottom floor: constants that several modules share, and the error a bad parameter
raises. It imports nothing of the package, so any module may import it (tests/test_imports.py checks
that the package's imports form no circle)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A draw declared ahead of its publication (issue 71): data/draws/<name> holds its analysis plan, claims and
# profiles, committed before any unit of it runs; RAGFT_DRAW=<name> points the package at them (computing
# its units), and at publication they replace data/ and experiments/profiles/ unchanged.
DRAWS_DIR = PROJECT_ROOT / "data" / "draws"


def _draw_folder() -> Path | None:
    name = os.environ.get("RAGFT_DRAW", "").strip()
    if not name:
        return None
    folder = DRAWS_DIR / name
    if not (folder / "analysis_plan.yaml").is_file():
        known = sorted(p.name for p in DRAWS_DIR.glob("*") if (p / "analysis_plan.yaml").is_file()) if DRAWS_DIR.is_dir() else []
        raise ValueError(f"RAGFT_DRAW={name!r}: no declared draw there ({folder}); use one of {known} or unset it")
    return folder


DRAW_FOLDER = _draw_folder()
DATA_DIR = DRAW_FOLDER or PROJECT_ROOT / "data"  # where the analysis plan and the claims are read
PROFILE_DIR = DRAW_FOLDER / "profiles" if DRAW_FOLDER else PROJECT_ROOT / "experiments" / "profiles"
PROFILES = ("smoke", "cpu", "gpu")
# the reply a reader gives when its sources do not hold the answer (refusal is scored on it)
REFUSAL_ANSWER = "I don't know"
DEPENDS = "depends"  # a claim whose verdict depends on the case (the ledger's word for it)


class ParamError(ValueError):
    """A chapter parameter with a value that is not allowed."""
