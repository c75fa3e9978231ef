import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("RAGFT_ONLINE", "0")
sys.path.insert(0, str(ROOT / "src"))


@pytest.fixture(scope="session")
def kb():
    from ragft.corpus import build_kb

    return build_kb(0)


@pytest.fixture(scope="session")
def kb_v2():
    from ragft.corpus import build_kb

    return build_kb(0, version="v2")


@pytest.fixture(scope="session")
def lm():
    """The offline default model (converted once into the cache on first use)."""
    from ragft import models, settings

    settings.set_determinism(0, 2)
    return models.load_lm("smollm2-135m")
