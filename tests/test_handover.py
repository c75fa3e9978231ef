"""The one door between chapters (ragft.handover): what chapters 3 and 4 hand over is read back by a
later chapter of the same run, checked once, or refused with the reason the reader prints."""

from types import SimpleNamespace

import pytest

from ragft import config, handover, settings
from ragft.results import ChapterRun


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "run_dir", lambda: tmp_path)
    return tmp_path


DSF_REF, RAFT_REF = f"unit:dsf-p3-{'a' * 16}@8", f"unit:raft-kb-{'b' * 16}@1"


def test_what_chapters_3_and_4_hand_over_is_read_back_checked(run_dir, monkeypatch):
    """The hand-over names unit checkpoints (ragft.train.units.Trained.ref); a later chapter checks the
    unit is stored (here: a set of stored refs stands for the units folder)."""
    stored = {DSF_REF, RAFT_REF}

    def by_ref(ref):
        if ref not in stored:
            raise handover.units.UnitError(f"{ref} is not stored")
        return None, 0

    monkeypatch.setattr(handover.units, "by_ref", by_ref)
    facts = [SimpleNamespace(qid="f1"), SimpleNamespace(qid="f2")]
    p3 = config.resolve("03_finetune", "smoke")
    ChapterRun("03_finetune", p3).save(handover.give_dsf(facts, DSF_REF))
    p4 = config.resolve("04_raft", "smoke")
    ChapterRun("04_raft", p4).save(handover.give_raft(RAFT_REF))
    assert handover.dsf_facts(p3.model, p3.kb_seed) == ["f1", "f2"]
    assert handover.dsf_facts("another-model", p3.kb_seed) is None  # another model's facts are not these
    assert handover.dsf_facts(p3.model, p3.kb_seed + 1) is None  # nor another knowledge base's
    got = handover.dsf(p3.model, ["f1", "f2"])
    assert got.usable and got.adapter == DSF_REF
    assert handover.raft(p4.model).adapter == RAFT_REF
    # each way a hand-over cannot be used says why, for the reader's line
    assert "other facts" in handover.dsf(p3.model, ["f1"]).why
    assert "reads with 'other'" in handover.dsf("other", ["f1", "f2"]).why
    assert "no RAFT adapter for this model" in handover.raft("other").why
    stored.clear()
    assert "is not a stored unit checkpoint" in handover.dsf(p3.model, ["f1", "f2"]).why
