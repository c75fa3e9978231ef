"""The claims the book tests (data/claims.yaml): one place for their ids, words, sources and the
comparisons that carry each verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .constants import DATA_DIR, PROJECT_ROOT

CLAIMS_FILE = DATA_DIR / "claims.yaml"
ID = re.compile(r"^[KRFTSUDN]\d+$")
COMPARISON_ID = re.compile(r"^([KRFTSUDN]\d+)-")  # a comparison key that names the claim it tests


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    sources: tuple[str, ...]
    figure: str
    chapter: str
    comparisons: tuple[str, ...] = ()
    untested: str | None = None  # why no comparison carries it (yet)
    scales: str = ""  # whether the verdict should hold for larger models, and why
    effects: dict = field(default_factory=dict)  # comparison key -> (low, high): the source's stated difference, in points
    # equivalence comparisons whose support contradicts the claim (a fine-tune shown within the margin of
    # RAG answers "retrieval is the tool" with no): ragft.verdict.claim_row reads them with their pair
    against: tuple[str, ...] = ()


def load_claims(path: str | Path = CLAIMS_FILE) -> dict[str, Claim]:
    """The claims by id, checked: each has its words, sources, figure and chapter, and either the
    comparisons that test it or the reason none does (never both, never neither)."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a mapping of claim ids to claims")
    out = {}
    for cid, c in raw.items():
        where = f"{path}: claim {cid}"
        if not ID.match(str(cid)):
            raise ValueError(f"{where}: an id is a letter of KRFTSUDN and a number")
        missing = [k for k in ("claim", "sources", "figure", "chapter", "scales") if not c.get(k)]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        unknown = set(c) - {"claim", "sources", "figure", "chapter", "scales", "comparisons", "untested", "effects", "against"}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        if not c.get("comparisons") and not c.get("untested"):
            raise ValueError(f"{where}: give the comparisons that test it or `untested` with the reason (or both: "
                             "comparisons shown beside an untestable claim)")
        effects = c.get("effects") or {}
        for key, span in effects.items():
            if key not in (c.get("comparisons") or ()) or not (
                    isinstance(span, list) and len(span) == 2 and all(isinstance(v, (int, float)) for v in span) and span[0] <= span[1]):
                raise ValueError(f"{where}: effects[{key!r}] must be [low, high] points for one of its comparisons")
        against = c.get("against") or []
        if not set(against) <= set(c.get("comparisons") or ()):
            raise ValueError(f"{where}: against names {sorted(set(against) - set(c.get('comparisons') or ()))}, "
                             "not among its comparisons")
        out[cid] = Claim(cid, c["claim"], tuple(c["sources"]), str(c["figure"]), c["chapter"],
                         tuple(c.get("comparisons") or ()), c.get("untested"), c["scales"],
                         {k: tuple(v) for k, v in effects.items()}, tuple(against))
    return out
