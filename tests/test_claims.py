"""data/claims.yaml is the one list of claims: complete, cited, and tied to the chapters' comparisons."""

import json
import re

import pytest

from conftest import ROOT
from ragft.claims import COMPARISON_ID, load_claims

EXPECTED = ([f"K{i}" for i in range(1, 10)] + [f"R{i}" for i in range(1, 6)] + [f"F{i}" for i in range(1, 7)]
            + [f"T{i}" for i in range(1, 6)] + [f"S{i}" for i in range(1, 10)] + ["U1", "U2", "D1", "D2", "D3"]
            + ["N1"])  # N: the book's own questions, no article's


def test_every_claim_is_there_once_with_cited_sources():
    claims = load_claims()
    assert sorted(claims) == sorted(EXPECTED)
    keys = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(), re.M))
    for c in claims.values():
        assert set(c.sources) <= keys, f"{c.id}: sources not in references.bib: {set(c.sources) - keys}"


def test_published_comparisons_and_claims_point_at_each_other():
    claims = load_claims()
    published = {}
    for f in sorted((ROOT / "experiments" / "results" / "cpu").glob("*.json")):
        data = json.loads(f.read_text())
        published[data["chapter"]] = {c["claim"] for c in data.get("comparisons", [])}
    from ragft.plan import the_plan

    # what a claim names exists, once its chapter has published, but where the plan keeps it from cpu
    every = set().union(*published.values()) | set(the_plan().not_measured("cpu"))
    for c in claims.values():
        if c.chapter in published:
            missing = set(c.comparisons) - every
            assert not missing, f"{c.id}: comparisons {sorted(missing)} are in no published results file"
    for chapter, keys in published.items():  # a comparison named after a claim is listed under it
        for key in keys:
            m = COMPARISON_ID.match(key)
            if m:
                assert key in claims[m.group(1)].comparisons, f"{chapter}: {key!r} is not listed under {m.group(1)}"


def test_a_bad_claims_file_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "claims.yaml"
    bad.write_text("K1: {claim: x, sources: [a], figure: y, chapter: 01, scales: s}\n")
    with pytest.raises(ValueError, match="claim K1: give the comparisons that test it"):
        load_claims(bad)
    bad.write_text("X1: {claim: x, sources: [a], figure: y, chapter: 01, scales: s, untested: z}\n")
    with pytest.raises(ValueError, match="X1"):
        load_claims(bad)
    bad.write_text("K1: {claim: x, figure: y, chapter: 01, scales: s, untested: z}\n")
    with pytest.raises(ValueError, match=r"missing \['sources'\]"):
        load_claims(bad)


def test_every_source_links_to_its_copy_or_says_why_not():
    """The bibliography: a url for every paper; an article without a recorded address says so."""
    entries = re.findall(r"^@\w+\{([^,]+),(.*?)^\}", (ROOT / "references.bib").read_text(), re.M | re.S)
    assert entries
    for key, body in entries:
        assert re.search(r"url\s*=\s*\{https://", body) or "no public address was recorded" in body.lower(), key
    assert "shared" not in (ROOT / "chapters" / "bibliography.md").read_text()
