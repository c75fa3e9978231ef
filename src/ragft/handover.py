"""What one chapter hands the chapters after it, through one door: chapter 3's chosen fine-tune (its
adapter and the test facts it was trained on) and chapter 4's RAFT reader. The giving chapter keeps
them in its results file (`give_dsf`, `give_raft` return them as `artifacts` and `tables`, as published); a later
chapter of the same run reads them back with `dsf` or `raft`, which check them once and say why a
hand-over cannot be used (the giver has not run here, names no adapter, trained another model or
other facts, or its unit is not stored), so the reader can fall back and say so. An adapter is named as a
unit checkpoint (ragft.train.units), never as a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .results import Measured, read_chapter
from .train import units

DSF_CHAPTER, RAFT_CHAPTER = "03_finetune", "04_raft"


@dataclass(frozen=True)
class Handed:
    """A hand-over as a later chapter reads it: the adapter (a unit checkpoint), or `why` it cannot be used."""

    adapter: str | None
    why: str = ""
    doc: dict | None = None  # the giving chapter's results of this run, where it ran here

    @property
    def usable(self) -> bool:
        return not self.why


def give_dsf(facts: list, adapter: str | Path) -> Measured:
    """What chapter 3 hands over, for its results file: its chosen checkpoint and the test facts it
    was trained on."""
    return Measured(tables={"dsf_facts": [q.qid for q in facts]}, artifacts={"dsf_adapter": str(adapter)})


def give_seeds(dsf: list[str], reader: list[str], reader_arm: str | None) -> Measured:
    """What chapter 3 hands over on a seeded draw (the plan's `seeds`), beside give_dsf: the chosen
    checkpoint of the gold-questions arm in each training seed's run, and of the reader's arm."""
    return Measured(tables={"dsf_adapters": list(dsf), "reader_adapters": list(reader), "reader_arm": reader_arm or ""})


def give_raft(adapter: str | Path) -> Measured:
    """What chapter 4 hands over, for its results file: its main RAFT reader."""
    return Measured(artifacts={"raft_adapter": str(adapter)})


def _stored(ref: str) -> bool:
    """Whether a hand-over names a unit checkpoint that is stored (units.Trained.ref)."""
    try:
        units.by_ref(ref)
    except units.UnitError:
        return False
    return True


def dsf_facts(model: str, kb_seed: int, folder: Path | None = None) -> list[str] | None:
    """The ids of the test facts chapter 3 of this run fine-tuned, where it ran on this model and
    knowledge base; else None (the reader draws them with chapter 3's parameters)."""
    doc = read_chapter(DSF_CHAPTER, folder) or {}
    ran = doc.get("params") or {}
    if ran.get("model") != model or ran.get("kb_seed", kb_seed) != kb_seed:
        return None
    return (doc.get("tables") or {}).get("dsf_facts") or None


def dsf(model: str, facts: list[str], folder: Path | None = None) -> Handed:
    """Chapter 3's chosen fine-tune of this run, checked: it ran here, names its adapter (a unit
    checkpoint), trained this model on these test facts (`facts`: their ids), and the unit is stored."""
    doc = read_chapter(DSF_CHAPTER, folder)
    adapter = ((doc or {}).get("artifacts") or {}).get("dsf_adapter")
    if doc is None:
        why = "chapter 3 has not run in this run folder"
    elif not adapter:
        why = "chapter 3's results name no DSF adapter"
    elif (doc.get("params") or {}).get("model") != model:
        why = f"chapter 3 fine-tuned {doc['params'].get('model')!r}, this chapter reads with {model!r}"
    elif (doc.get("tables") or {}).get("dsf_facts", facts) != facts:
        why = "chapter 3 fine-tuned other facts (other parameters) than this chapter's test facts"
    elif not _stored(adapter):
        why = f"chapter 3's adapter {adapter} is not a stored unit checkpoint"
    else:
        why = ""
    return Handed(adapter, why, doc)


@dataclass
class Seeded:
    """Chapter 3's chosen checkpoints of every training seed on a seeded draw (give_seeds), checked as
    `dsf` checks its one: the gold-questions arm's, the reader's arm's, and why they are not usable."""

    gold: list
    reader: list
    reader_arm: str
    why: str


def seeded_dsf(model: str, facts: list[str], folder: Path | None = None) -> Seeded:
    """Chapter 3's every-seed hand-over of this run, checked like `dsf`, each checkpoint stored."""
    handed = dsf(model, facts, folder)
    tables = ((handed.doc or {}).get("tables") or {})
    gold, reader = list(tables.get("dsf_adapters") or []), list(tables.get("reader_adapters") or [])
    why = handed.why or ("chapter 3's results name no checkpoint per training seed" if not gold else "")
    if not why and not all(_stored(ref) for ref in gold + reader):
        why = "a checkpoint chapter 3's results name per seed is not a stored unit"
    return Seeded(gold, reader, tables.get("reader_arm") or "", why)


def raft(model: str, folder: Path | None = None) -> Handed:
    """Chapter 4's RAFT reader of this run, checked: it ran here on this model, names its adapter (a
    unit checkpoint), and the unit is stored."""
    doc = read_chapter(RAFT_CHAPTER, folder)
    adapter = ((doc or {}).get("artifacts") or {}).get("raft_adapter")
    same = doc is not None and (doc.get("params") or {}).get("model") == model
    if adapter and same and _stored(adapter):
        return Handed(adapter, "", doc)
    why = "chapter 4 has not run in this run folder" if doc is None else "chapter 4's results name no RAFT adapter for this model"
    return Handed(adapter, why, doc)
