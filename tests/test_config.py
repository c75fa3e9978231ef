"""Parameters: every profile resolves; every bad value stops with the name, the value and what is allowed."""

import dataclasses
import os

import pytest

from conftest import CHILD_TIMEOUT_S, ROOT
from ragft import config
from ragft.config import ParamError


@pytest.mark.parametrize("profile", config.PROFILES)
@pytest.mark.parametrize("chapter", sorted(config.CHAPTER_PARAMS))
def test_every_profile_resolves_for_every_chapter(profile, chapter):
    params = config.resolve(chapter, profile)
    assert params.profile == profile


def test_overrides_win_and_none_means_profile():
    p = config.resolve("01_prompting", "smoke", n_single=5, batch_size=None)
    assert p.n_single == 5 and p.batch_size == config.load_profile("smoke")["chapters"]["01_prompting"]["batch_size"]


BAD = [
    ("profile", "laptop"), ("model", "gpt-5"), ("embedder", "nope"), ("device", "tpu"), ("dtype", "int3"),
    ("seed", -1), ("threads", 0), ("online", "yes"), ("n_single", 0), ("n_single", 2.5), ("n_multihop", -1),
    ("n_unanswerable", -3), ("few_shot_ks", []), ("few_shot_ks", [1, -1]), ("few_shot_ks", 3),
    ("n_few_shot_questions", 0), ("long_context_tokens", [10]), ("n_long_context_questions", 0),
    ("max_new_tokens", 0), ("batch_size", 0), ("price_per_mtok", "free"),
]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_value_names_parameter_and_value(name, value):
    kwargs = {name: value} if name != "profile" else {}
    profile = value if name == "profile" else "smoke"
    with pytest.raises(ParamError) as err:
        config.resolve("01_prompting", profile, **kwargs)
    message = str(err.value)
    assert name in message and repr(value) in message and ("use" in message)


def test_unknown_parameter_is_refused():
    with pytest.raises(ParamError, match="top_kk"):
        config.resolve("01_prompting", "smoke", top_kk=3)


def test_unknown_chapter_is_refused():
    with pytest.raises(ParamError, match="chapter"):
        config.resolve("99_nothing", "cpu")


def test_bad_kb_sizes_are_refused():
    with pytest.raises(ParamError, match="n_series"):
        config.resolve("01_prompting", "smoke", kb={"n_series": 0})
    with pytest.raises(ParamError, match="kb"):
        config.resolve("01_prompting", "smoke", kb={"n_planets": 3})


RAFT_BAD = [("p_oracle", 1.5), ("p_values", [0.0, 0.4]), ("n_distractors", 5), ("distractors", "nearest"),
            ("rag_top_k", 4), ("n_train", 0), ("chunk_size", 8), ("bench_test", 0), ("hotpotqa_top_k", 11),
            ("cot_max_new_tokens", 2), ("bench_dsf", "yes")]


@pytest.mark.parametrize("name,value", RAFT_BAD)
def test_raft_bad_values_are_refused(name, value):
    with pytest.raises(ParamError) as err:
        config.resolve("04_raft", "smoke", **{name: value})
    assert name in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("chapter,name,value,alike", [
    ("02_rag", "scale_sizes", [1_500, 1_800], "1500, 1800"),  # both "1k" in retrieval_p50_ms_1k
    ("04_raft", "p_values", [0.0, 0.333, 0.334, 0.8], "0.333, 0.334"),  # both "33" in raft_p33_acc
])
def test_values_a_metric_name_would_read_alike_are_refused(chapter, name, value, alike):
    """Each would measure one metric twice (Measured refuses that after the run): refused here first."""
    with pytest.raises(ParamError, match=f"{alike} would share one metric name"):
        config.resolve(chapter, "smoke", **{name: value})
    assert config.scale_tag(10_000) == "10k" and config.scale_tag(500) == "500" and config.percent_tag(0.4) == "40"


def _declared(chapter):
    from ragft.config import CHAPTER_PARAMS

    return [f for f in dataclasses.fields(CHAPTER_PARAMS[chapter])]


@pytest.mark.parametrize("chapter", ["01_prompting", "02_rag", "03_finetune", "04_raft", "08_your_case"])
def test_every_declared_range_and_type_is_enforced(chapter):
    """Each parameter is declared once (default, comment, range); validation follows the declaration."""
    from ragft.config import ParamError, resolve

    for f in _declared(chapter):
        if f.name == "profile":
            continue  # resolve's own argument, checked against PROFILES
        assert f.metadata.get("help"), f"{f.name} has no comment for the parameters cell"
        bounds = f.metadata.get("bounds")
        bad = []
        if bounds is not None:
            lo, hi = bounds
            bad = [[lo - 1], [hi + 1], []] if f.type == "list" else [lo - 1, hi + 1, 1.5, True]
        elif f.metadata.get("choices"):  # a name from a fixed set
            bad = ["nope", 5]
        elif f.metadata.get("rate"):  # a learning rate: a number in (0, 1)
            bad = [0.0, 1.0, 1.5, "3e-3"]
        elif f.type in ("str", "bool"):
            bad = [5]
        for value in bad:
            with pytest.raises(ParamError, match=f.name):
                resolve(chapter, "smoke", **{f.name: value})


def test_unknown_notebook_parameter_names_itself_and_the_known_ones():
    from ragft.config import ParamError, from_notebook

    with pytest.raises(ParamError, match=r"\['max_fil_mb'\].*it takes \['profile'"):
        from_notebook("02_rag", {"profile": "smoke", "max_fil_mb": 3, "_": None})
    # in a kernel: papermill injected a misspelt name (its cell is plain `name = literal` lines)
    injected = '# Parameters\nprofile = "smoke"\nmax_fil_mb = 3\n'
    with pytest.raises(ParamError, match=r"\['max_fil_mb'\].*it takes \['profile'"):
        from_notebook("02_rag", {"profile": "smoke", "max_fil_mb": 3, "In": ["", injected]})
    assert from_notebook("02_rag", {"profile": "smoke", "max_file_mb": 3.0}).max_file_mb == 3.0


def test_a_rerun_in_the_same_kernel_sees_the_same_parameters():
    """Run all twice, or the validation cell again: the chapter's own variables (params, ch, a table)
    are in the namespace by then, and only what the parameter cells assigned counts."""
    from ragft.config import from_notebook, parameter_names, parameters_cell

    validate = 'from ragft import config\n\nparams = config.from_notebook("02_rag", globals())'
    cells = ["", parameters_cell("02_rag"), '# Parameters\nprofile = "smoke"\nmax_file_mb = 3.0\n', validate,
             "ch = ch02.setup(params)\ntable = ch02.grid(ch)", "%matplotlib inline"]
    names = parameter_names(cells)
    assert names[0] == "profile" and "max_file_mb" in names and not {"params", "ch", "table"} & set(names)
    namespace = {name: None for name in names} | {"profile": "smoke", "max_file_mb": 3.0}
    first = from_notebook("02_rag", {**namespace, "In": cells[:4]})
    again = from_notebook("02_rag", {**namespace, "In": cells + cells, "params": first, "ch": object(), "table": 1})
    assert again == first and again.max_file_mb == 3.0


def test_the_lora_and_retrieval_groups_are_declared_once():
    """Every chapter that trains an adapter takes the LoRA fields from config.Lora, and every chunk size
    and chunks-per-question field comes from config.Retrieval: the same range, comment where shared,
    and checks (a learning rate in (0, 1); a chunk the embedder reads whole)."""
    from ragft.config import CHAPTER_PARAMS, Lora

    lora = {"lora_rank": Lora.rank(), "lora_alpha": Lora.alpha(), "lora_lr": Lora.lr(), "train_batch_size": Lora.batch(),
            "warmup_steps": Lora.warmup()}
    seen = 0
    for chapter, cls in CHAPTER_PARAMS.items():
        for f in dataclasses.fields(cls):
            if f.name in lora:
                seen += 1
                assert {k: v for k, v in f.metadata.items() if k != "help"} == \
                    {k: v for k, v in lora[f.name].metadata.items() if k != "help"}, (chapter, f.name)
            if "chunk_size" in f.name:
                assert f.metadata["chunk"] and f.metadata["bounds"] == (32, 4096), (chapter, f.name)
            if f.name.endswith(("top_k", "top_ks")):
                assert f.metadata["bounds"][0] == 1, (chapter, f.name)
    assert seen == 15  # chapters 3, 4 and 8 (rank, alpha, rate, batch; warm-up in 3 and 8) and chapter 6's rank


def test_every_chapter_under_the_gpu_profile_on_a_cpu_machine_is_refused_with_no_network_look_up(tmp_path):
    """On a machine without CUDA (this one), the gpu profile is refused in every chapter's parameters
    cell (config.from_notebook) and in chapter 8's estimate, which used to switch the run online and
    load the hub tokenizer first (19 blocked look-ups, then transformers' OSError): in a process under
    tests/netguard, which logs every non-loopback connection and DNS look-up, each is refused with the
    ParamError that says what to do, and the guard's log is empty."""
    import subprocess
    import sys

    code = ("import torch\n"
            "assert not torch.cuda.is_available()\n"
            "from ragft import config\n"
            "from ragft.constants import ParamError\n"
            "from ragft.experiments import ch08_your_case as ch08\n"
            "refused = []\n"
            "for chapter in sorted(config.CHAPTER_PARAMS):\n"
            "    try:\n"
            "        config.from_notebook(chapter, {'profile': 'gpu'})\n"
            "    except ParamError as e:\n"
            "        refused.append(chapter if 'needs a CUDA GPU' in str(e) else str(e))\n"
            "params = config.resolve('08_your_case', 'gpu')\n"
            "try:\n"
            "    ch08.estimate(params, None)\n"
            "except ParamError as e:\n"
            "    refused.append('estimate' if 'needs a CUDA GPU' in str(e) else str(e))\n"
            "print(' '.join(refused))\n")
    log = tmp_path / "netguard.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "netguard"), str(ROOT / "src")]),
           "RAGFT_NETGUARD_LOG": str(log), "RAGFT_ONLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == sorted(config_chapters()) + ["estimate"]
    assert log.exists() and log.read_text() == ""  # guarded, and not one look-up


def config_chapters():
    from ragft.config import CHAPTER_PARAMS

    return list(CHAPTER_PARAMS)


@pytest.mark.parametrize("profile", ["cpu", "gpu", "smoke"])
def test_a_profile_states_only_what_differs_from_the_declared_defaults(profile):
    # issue 65: 63 of the cpu profile's 108 chapter entries had restated their default; a value at its
    # default lives in ragft.config alone (a comment in the profile may say why it suits the profile).
    # An entry at its default is needed only where `common` would otherwise set another value.
    raw = config.load_profile(profile)
    restated = []
    for chapter, entries in (raw.get("chapters") or {}).items():
        fields = {f.name: f for f in dataclasses.fields(config.CHAPTER_PARAMS[chapter])}
        for name, value in (entries or {}).items():
            f = fields.get(name)
            default = (f.default if f.default is not dataclasses.MISSING else f.default_factory()) if f else dataclasses.MISSING
            if value == default and name not in (raw.get("common") or {}):
                restated.append(f"{chapter}.{name}")
    assert restated == []
