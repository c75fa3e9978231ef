"""A draw declared ahead of its publication (data/draws/<name>, issue 71): RAGFT_DRAW points the package at
its plan, claims and profiles. The package reads the variable once, at import, so each case runs in a
fresh interpreter."""

import os
import subprocess
import sys

import pytest

from conftest import CHILD_TIMEOUT_S
from ragft.constants import DRAWS_DIR, PROJECT_ROOT


def _python(code: str, draw: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAGFT_DRAW"}
    if draw is not None:
        env["RAGFT_DRAW"] = draw
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)

def test_an_unknown_draw_is_refused_with_the_known_ones():
    out = _python("import ragft.plan", "no-such-draw")
    assert out.returncode != 0
    assert "RAGFT_DRAW='no-such-draw'" in out.stderr and "use one of" in out.stderr

def test_without_a_draw_the_package_reads_the_published_plan_and_profiles():
    out = _python("from ragft.plan import PLAN_FILE; from ragft.config import PROFILE_DIR; print(PLAN_FILE); print(PROFILE_DIR)", None)
    assert out.returncode == 0, out.stderr
    plan, profiles = out.stdout.split()
    assert plan == str(PROJECT_ROOT / "data" / "analysis_plan.yaml")
    assert profiles == str(PROJECT_ROOT / "experiments" / "profiles")

@pytest.mark.parametrize("draw", sorted(p.name for p in DRAWS_DIR.glob("*") if (p / "analysis_plan.yaml").is_file()))
def test_each_declared_draw_loads_its_own_plan_and_claims(draw):
    # the loader's checks (claims list every primary, stated effects exist, fitness rules well formed)
    # hold for the declared draw as for the published plan; the plan names the draw it declares
    code = ("from ragft.plan import the_plan, PLAN_FILE; from ragft.claims import CLAIMS_FILE; import yaml; "
            "the_plan(); print(PLAN_FILE.parent == CLAIMS_FILE.parent, yaml.safe_load(PLAN_FILE.read_text())['draw']['name'])")
    out = _python(code, draw)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", draw]
