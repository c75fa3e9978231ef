"""Every chapter's set-up under the `gpu` profile, the one Colab gets by default, run here on the CPU:
its parameters, its inputs and the network switched online, up to the point where its first model
would load (issue 47: chapter 8 stopped there on Colab, asking for a hub model while still offline).
The hub is faked: a hub model's files are the tiny model's folder, handed out only to an online run,
and loading a language model stops the chapter with `Reached`, so no model is loaded."""

import importlib

import pytest

from conftest import ROOT
from ragft import config, models, settings

CASE_DIR = ROOT / "tests" / "fixtures" / "case"  # chapter 8's tiny case (tests/test_ch08_your_case.py)
# the chapters that load a language model in their set-up (chapter 6 loads one later, to time it;
# chapter 7 and the front page read results only)
LOADS_A_MODEL = ("01_prompting", "02_rag", "03_finetune", "04_raft", "05_freshness", "08_your_case")
READS_ONLY = ("06_cost", "07_verdict")


class Reached(Exception):
    """The chapter got as far as loading its first language model."""


@pytest.fixture
def faked_hub(monkeypatch, tmp_path):
    """Hub model names resolve to the tiny model's folder in an online run only; load_lm records who
    asked for which model, online or not, and stops there."""
    folder = models.model_source("smollm2-tiny")  # built offline, before the fake
    loads = []

    def hub(name):
        if settings.offline():
            raise models.ModelUnavailable(f"model {name!r} comes from the model hub, and this run is offline")
        return folder

    def load_lm(name, *args, **kwargs):
        loads.append((name, settings.offline()))
        raise Reached(name)

    monkeypatch.setattr(models, "model_source", hub)
    monkeypatch.setattr(models, "load_lm", load_lm)
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    settings.set_online(False)
    yield loads
    settings.set_online(False)


def chapter_module(chapter: str):
    return importlib.import_module(f"ragft.experiments.ch{chapter}")


@pytest.mark.lm  # builds the tiny model's folder (no weights are loaded into a model)
@pytest.mark.parametrize("chapter", LOADS_A_MODEL)
def test_each_chapter_sets_up_under_the_gpu_profile_and_goes_online_before_its_first_model(chapter, faked_hub):
    extra = {"corpus_dir": str(CASE_DIR / "docs"), "questions_file": str(CASE_DIR / "questions.jsonl"),
             "train_questions_file": str(CASE_DIR / "train_questions.jsonl"), "min_dev": 2, "min_test": 4} \
        if chapter == "08_your_case" else {}
    p = config.resolve(chapter, "gpu", device="cpu", **extra)  # on this CPU on purpose (else refused)
    assert p.online and not models.get_spec(p.model).offline  # Colab's default: a hub model, online
    mod = chapter_module(chapter)
    with pytest.raises(Reached):
        if chapter == "08_your_case":  # the notebook's order: its inputs, the training estimate, then set-up
            inputs = mod.read_inputs(p)
            mod.estimate(p, inputs)
            mod.setup(p, inputs)
        else:
            mod.setup(p)
    assert faked_hub == [(p.model, False)]


@pytest.mark.parametrize("chapter", READS_ONLY)
def test_the_chapters_that_read_results_set_up_under_the_gpu_profile(chapter, faked_hub):
    chapter_module(chapter).setup(config.resolve(chapter, "gpu", device="cpu"))
    assert faked_hub == []
