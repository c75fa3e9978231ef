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


def test_what_chapters_3_and_4_hand_over_is_read_back_checked(run_dir):
    facts = [SimpleNamespace(qid="f1"), SimpleNamespace(qid="f2")]
    dsf_folder, raft_folder = run_dir / "dsf", run_dir / "raft"
    dsf_folder.mkdir()
    raft_folder.mkdir()
    p3 = config.resolve("03_finetune", "smoke")
    ChapterRun("03_finetune", p3).save(handover.give_dsf(facts, dsf_folder))
    p4 = config.resolve("04_raft", "smoke")
    ChapterRun("04_raft", p4).save(handover.give_raft(raft_folder))
    assert handover.dsf_facts(p3.model, p3.kb_seed) == ["f1", "f2"]
    assert handover.dsf_facts("another-model", p3.kb_seed) is None  # another model's facts are not these
    assert handover.dsf_facts(p3.model, p3.kb_seed + 1) is None  # nor another knowledge base's
    got = handover.dsf(p3.model, ["f1", "f2"])
    assert got.usable and got.adapter == str(dsf_folder)
    assert handover.raft(p4.model).adapter == str(raft_folder)
    # each way a hand-over cannot be used says why, for the reader's line
    assert "other facts" in handover.dsf(p3.model, ["f1"]).why
    assert "reads with 'other'" in handover.dsf("other", ["f1", "f2"]).why
    assert "no RAFT adapter for this model" in handover.raft("other").why
    dsf_folder.rmdir()
    assert "is gone" in handover.dsf(p3.model, ["f1", "f2"]).why


def test_a_chapter_that_has_not_run_hands_over_nothing(run_dir):
    assert handover.dsf("m", ["f1"]).why == "chapter 3 has not run in this run folder"
    assert handover.raft("m").why == "chapter 4 has not run in this run folder"
    assert handover.dsf_facts("m", 0) is None
