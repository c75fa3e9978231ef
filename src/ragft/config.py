"""Typed chapter parameters: profile defaults, overrides, validation.

Layers, later wins: the chapter's dataclass defaults < experiments/profiles/<profile>.yaml <
the notebook's parameters cell (papermill -p) when a value is not None. Validation fails at once
with a message naming the parameter, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .constants import PROFILE_DIR, PROFILES, PROJECT_ROOT, ParamError
from .corpus.kb import KBSizes
from .costs import load_prices, row
from .decide import Reader
from .models import REGISTRY, max_chunk_tokens
from .settings import refuse_without_cuda



def param(default, help: str, bounds: tuple[int, int] | None = None, exists: str | None = None,
          chunk: bool = False, rate: bool = False, choices: tuple[str, ...] = ()):
    """Declare a chapter parameter once: its default, the one-line comment that the notebook's
    parameters cell shows (the cell is generated from these declarations: `python -m ragft.strip`),
    for integers and lists of integers the allowed range, for a path whether it must be an existing
    "folder" or "file" when given, for a chunk size (chunk=True) that the embedder reads the chunk
    whole, for a learning rate (rate=True) that it is a number in (0, 1), and for a name with a fixed
    set of values its `choices` (all checked by `Common.validate`, before any model loads)."""
    meta = {"help": help, "bounds": bounds, "exists": exists, "chunk": chunk, "rate": rate, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class Lora:
    """The LoRA group, declared once: every chapter that trains or loads an adapter takes its fields from
    here, at that chapter's own default where it differs (its profile sets the published values)."""

    @staticmethod
    def rank(help: str = "LoRA rank r"):
        return param(8, help, bounds=(1, 1024))

    @staticmethod
    def alpha():
        return param(16, "LoRA scaling numerator (the scale is alpha / r)", bounds=(1, 4096))

    @staticmethod
    def lr(help: str = "LoRA learning rate"):
        return param(3e-3, help, rate=True)

    @staticmethod
    def batch(default: int = 8):
        return param(default, "examples per optimizer step", bounds=(1, 512))

    @staticmethod
    def warmup():
        return param(2, "optimizer steps of warm-up before the constant learning rate", bounds=(0, 10_000))

    @staticmethod
    def recompute():
        return param(False, "train and score every fine-tune live instead of reading its trained unit (ragft.train.units); nothing is stored")


class Retrieval:
    """The retrieval group, declared once: chunk sizes (one or a list, in the embedder's tokens, each read
    whole: checked against the embedder's window), chunks per question (one or a list) and the method.
    Each chapter says in its own words what its sizes are for."""

    METHODS = ("dense", "bm25", "hybrid")

    @staticmethod
    def chunk_size(default, help: str):
        return param(default, help, bounds=(32, 4096), chunk=True)

    @staticmethod
    def top_k(default, help: str, most: int = 50):
        return param(default, help, bounds=(1, most))

    @staticmethod
    def method(help: str = "dense | bm25 | hybrid"):
        return param("hybrid", help, choices=Retrieval.METHODS)


def check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ParamError(f"parameter {name}={value!r} is not allowed: {allowed}")


def check_int(name: str, value, lo: int, hi: int) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi, name, value,
          f"use an integer in [{lo}, {hi}]")


def check_int_list(name: str, values, lo: int, hi: int) -> None:
    ok = isinstance(values, (list, tuple)) and len(values) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values)
    # papermill's -p passes "[1, 3]" as text; -y parses YAML
    hint = f" (papermill -p passes text: give a list with -y \"{name}: [{lo}, {hi}]\")" if isinstance(values, str) else ""
    check(ok, name, values, f"use a non-empty list of integers in [{lo}, {hi}]{hint}")


def scale_tag(size: int) -> str:
    """An index size as chapter 2's scale metrics name it: 10000 -> "10k", 500 -> "500"."""
    return f"{size // 1000}k" if size >= 1000 else str(size)


def percent_tag(share: float) -> str:
    """A share as chapter 4's P-ablation metrics name it: 0.4 -> "40"."""
    return f"{share * 100:.0f}"


def check_tags(name: str, values: list, tag) -> None:
    """Two values that a metric's name would read alike (1500 and 1800 both "1k") would measure one
    metric twice: refused before any model loads."""
    tags = [tag(v) for v in values]
    alike = sorted({repr(v) for v, t in zip(values, tags) if tags.count(t) > 1})
    check(not alike, name, values, f"{', '.join(alike)} would share one metric name: choose values that differ there")


def check_price_row(name: str, value) -> None:
    rows = sorted(load_prices())
    check(value in rows, name, value, f"use a row of data/pricing.yaml: {rows}")


@dataclass
class Common:
    """Parameters every chapter shares."""

    profile: str = param("cpu", "smoke | cpu | gpu: sizes and models from experiments/profiles/<profile>.yaml; None: gpu where CUDA is, else cpu")
    model: str = param("smollm2-135m", "a language model name in ragft.models.REGISTRY")
    embedder: str = param("minilm", "an embedder name in ragft.models.REGISTRY")
    device: str = param("auto", "auto | cpu | cuda")
    dtype: str = param("auto", "auto (fp32 on a CPU, bf16 on a GPU) | fp32 | bf16 | fp16; bf16 on a CPU is faster on some CPUs, not drift-checked")
    seed: int = param(0, "seed of every sampling and training draw", bounds=(0, 2**31 - 1))
    threads: int = param(2, "CPU threads for torch (fixed: results depend on it)", bounds=(1, 256))
    kb_seed: int = param(0, "seed of the synthetic knowledge base", bounds=(0, 2**31 - 1))
    online: bool = param(False, "let hub ids load (Colab); offline runs make no network call")
    kb: KBSizes = field(default_factory=KBSizes, metadata={"help": "knowledge-base sizes, a mapping of KBSizes fields (pass with -y)"})

    def validate(self) -> None:
        check(self.profile in PROFILES, "profile", self.profile, f"use one of {list(PROFILES)}")
        lms = sorted(n for n, s in REGISTRY.items() if s.kind == "lm")
        check(self.model in lms, "model", self.model, f"use a registry name: {lms}")
        embedders = sorted(n for n, s in REGISTRY.items() if s.kind == "embedder")
        check(self.embedder in embedders, "embedder", self.embedder, f"use a registry name: {embedders}")
        check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "use 'auto', 'cpu' or 'cuda'")
        check(self.dtype in ("auto", "fp32", "bf16", "fp16"), "dtype", self.dtype, "use auto, fp32, bf16 or fp16")
        for f in dataclasses.fields(self):  # what the declarations say: types, and ranges where given
            value = getattr(self, f.name)
            if f.type == "str":
                check(isinstance(value, str), f.name, value, "use a string (empty for the default, where allowed)")
            elif f.type == "bool":
                check(isinstance(value, bool), f.name, value, "use True or False")
            elif f.type == "float" and value is not None:  # inf and nan pass every comparison: refuse them here
                check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                      f.name, value, "use a finite number")
            elif f.type == "list" and isinstance(value, list):  # a repeated entry would run (or train) twice
                repeated = sorted({repr(v) for v in value if value.count(v) > 1})
                check(not repeated, f.name, value, f"list each value once (repeated: {', '.join(repeated)})")
            choices = f.metadata.get("choices")
            if choices:
                check(value in choices, f.name, value, f"use {', '.join(choices[:-1])} or {choices[-1]}")
            if f.metadata.get("rate"):
                check(isinstance(value, float) and 0 < value < 1, f.name, value, "use a learning rate in (0, 1)")
            bounds = f.metadata.get("bounds")
            if bounds is not None:
                (check_int_list if f.type == "list" else check_int)(f.name, value, *bounds)
            if f.metadata.get("chunk"):  # the embedder's window (ragft.models): a longer chunk would be cut
                most = max_chunk_tokens(self.embedder)
                check(all(v <= most for v in (value if isinstance(value, list) else [value])), f.name, value,
                      f"the embedder {self.embedder} reads at most {most} tokens of a chunk (its window, less its "
                      f"2 special tokens): use sizes up to {most}")
            exists = f.metadata.get("exists")
            if exists and value:  # empty: the default, which the chapter names
                path = Path(value).expanduser()
                check(path.is_dir() if exists == "folder" else path.is_file(), f.name, value,
                      f"use an existing {exists}: {f.metadata['help']}")


@dataclass
class Answering(Common):
    """Parameters of every chapter that generates answers."""

    max_new_tokens: int = param(32, "tokens generated per short answer (this model answers in a sentence: 16 cut half off)", bounds=(1, 512))
    batch_size: int = param(16, "questions generated together", bounds=(1, 512))
    price_per_mtok: str = param("s4_actian", "a price row of data/pricing.yaml, for dollars per 1,000 queries")

    def validate(self) -> None:
        super().validate()
        check_price_row("price_per_mtok", self.price_per_mtok)


@dataclass
class FrontPageParams(Common):
    pass


@dataclass
class PromptingParams(Answering):
    """Chapter 1: prompt engineering and long context."""

    n_single: int = param(64, "single-fact test questions (held-out paraphrases), ranked by log-likelihood", bounds=(1, 10_000))
    n_multihop: int = param(32, "two-document questions", bounds=(0, 10_000))
    n_unanswerable: int = param(29, "questions whose right answer is a refusal", bounds=(0, 10_000))
    few_shot_ks: list = param([0, 1, 3, 5], "numbers of few-shot examples to try", bounds=(0, 16))
    n_few_shot_questions: int = param(64, "few-shot runs: the first n single-fact and n/2 unanswerable questions", bounds=(1, 10_000))
    n_few_shot_dev: int = param(64, "development questions (single-fact, no test question or example): they choose the few-shot k", bounds=(1, 10_000))
    long_context_tokens: list = param([1000, 2500], "haystack sizes", bounds=(300, 128_000))
    n_long_context_questions: int = param(64, "questions asked of the haystacks at each size", bounds=(1, 1_000))
    haystack_documents: int = param(2, "gold documents per haystack; each haystack is asked all their questions", bounds=(1, 100))
    n_generated: int = param(12, "answers generated (the format view: EM, F1, refusals): the first n single-fact and n/2 unanswerable and two-hop questions", bounds=(1, 10_000))

    def validate(self) -> None:
        super().validate()


@dataclass
class RagParams(Answering):
    """Chapter 2: RAG with LlamaIndex and Chroma."""

    chunk_sizes: list = Retrieval.chunk_size([64, 128, 256, 510], "knowledge-base chunk sizes, in the embedder's tokens (at most its window)")
    chunk_overlap: int = param(16, "tokens shared by neighbouring chunks")
    top_ks: list = Retrieval.top_k([1, 3, 5, 8], "chunks retrieved per question, for the retrieval grid")
    docs_per_page: int = param(8, "knowledge-base documents per indexed page", bounds=(1, 1_000))
    retrieval: str = Retrieval.method("dense | bm25 | hybrid: the method the answering experiments use")
    n_retrieval_questions: int = param(200, "single-fact questions for the retrieval grid", bounds=(1, 100_000))
    n_scored_questions: int = param(64, "answerable questions scored by candidate log-likelihood at every answer top-k", bounds=(1, 100_000))
    n_scored_unanswerable: int = param(29, "unanswerable questions scored at the fewest chunks (refusal as a detector)", bounds=(0, 100_000))
    answer_top_ks: list = Retrieval.top_k([1, 3, 5], "top-ks scored and answered (prefill grows with k)")
    n_answer_questions: int = param(16, "generated answers at every answer top-k, to show their form", bounds=(1, 100_000))
    n_unanswerable: int = param(8, "unanswerable questions with generated answers", bounds=(0, 100_000))
    n_latency_queries: int = param(8, "live queries timed stage by stage", bounds=(1, 100_000))
    scale_sizes: list = param([1_000, 10_000, 100_000], "chunks in the index", bounds=(100, 10_000_000))
    ef_search: list = param([100, 200, 400], "HNSW search breadth; the first is used", bounds=(10, 10_000))
    n_scale_queries: int = param(100, "queries timed per index size", bounds=(1, 100_000))
    squad_articles: int = param(12, "SQuAD dev articles indexed whole, chunked at every squad_chunk_sizes (of 48)", bounds=(2, 48))
    squad_dev_articles: int = param(4, "of them, the articles whose questions are development questions (the rest: test)", bounds=(1, 47))
    squad_chunk_sizes: list = Retrieval.chunk_size([64, 128, 256, 510], "SQuAD chunk sizes measured; R1 compares 64 with 256 when both are listed")
    token_budgets: list = param([256, 512], "retrieved tokens per question at which chunk sizes are compared; development questions choose one", bounds=(32, 100_000))
    n_squad_questions: int = param(400, "SQuAD test questions for retrieval (R1, R2)", bounds=(1, 100_000))
    n_squad_read: int = param(48, "of them, questions the model answers at the chosen budget, at 64 and 256 tokens per chunk", bounds=(0, 100_000))
    n_nq_questions: int = param(32, "NaturalQuestions-Open, read with the gold passage", bounds=(0, 100_000))
    data_dir: str = param("", "benchmark folder; empty: RAGFT_DATA_DIR, else the repository data/benchmarks", exists="folder")
    corpus_dir: str = param("", "your documents (.md .txt .html); empty: the sample folder data/sample_docs",
                            exists="folder")
    questions_file: str = param("", "JSONL of your questions, one {'question', 'answers'} a line; empty: none (the sample folder brings its own)",
                                exists="file")
    max_file_mb: float = param(2.0, "larger files are skipped")
    chroma_host: str = param("", "a Chroma server; empty: a local PersistentClient in the run folder")
    chroma_port: int = param(8000, "port of the Chroma server", bounds=(1, 65_535))
    sections: list = param(["own_documents", "knowledge_base", "scale", "benchmarks"],
                           "what runs; your documents alone (about a minute): -y 'sections: [own_documents]'")
    own_chunk_size: int = Retrieval.chunk_size(256, "chunk size for your documents (the knowledge-base grid's choice in the cpu run)")
    own_top_k: int = Retrieval.top_k(3, "chunks retrieved per question of yours")

    SECTIONS = ("own_documents", "knowledge_base", "scale", "benchmarks")

    def validate(self) -> None:
        super().validate()
        check(isinstance(self.sections, list) and self.sections and set(self.sections) <= set(self.SECTIONS),
              "sections", self.sections, f"use a non-empty list from {list(self.SECTIONS)} (papermill: -y \"sections: [own_documents]\")")
        check_tags("scale_sizes", self.scale_sizes, scale_tag)
        needs = [s for s in ("scale", "benchmarks") if s in self.sections and "knowledge_base" not in self.sections]
        check(not needs, "sections", self.sections, f"{needs} read the knowledge base's index: add knowledge_base")
        # the overlap applies to every chunk size, the grid's and your documents' alike
        check_int("chunk_overlap", self.chunk_overlap, 0,
                  min([*self.chunk_sizes, *self.squad_chunk_sizes, self.own_chunk_size]) - 1)
        check(isinstance(self.squad_dev_articles, int) and self.squad_dev_articles < self.squad_articles,
              "squad_dev_articles", self.squad_dev_articles,
              f"use fewer than squad_articles={self.squad_articles}: the test questions need articles of their own")
        # scored and answered questions are the retrieval grid's first ones
        check_int("n_scored_questions", self.n_scored_questions, 1, self.n_retrieval_questions)
        check_int("n_answer_questions", self.n_answer_questions, 1, self.n_retrieval_questions)
        check(not self.chroma_host or self.online or self.chroma_host in LOOPBACK, "chroma_host", self.chroma_host,
              "a Chroma server on another machine is a network call, and this run is offline: set online=True, "
              "serve it on this machine (localhost), or leave chroma_host empty for the local store")
        check(isinstance(self.max_file_mb, (int, float)) and 0 < self.max_file_mb <= 1_000, "max_file_mb",
              self.max_file_mb, "use a size in MB in (0, 1000]")


@dataclass
class FinetuneParams(Answering):
    """Chapter 3: fine-tuning with LoRA, QLoRA and full fine-tuning."""

    n_facts: int = param(16, "test facts fine-tuned closed book (DSF) and asked with RAG", bounds=(1, 10_000))
    n_dev_facts: int = param(16, "development facts: the learning-rate sweep and the checkpoint choice, never test facts", bounds=(1, 10_000))
    test_documents: int = param(0, "test facts drawn as whole documents: every fact of this many documents (0: n_facts facts sampled across the base)", bounds=(0, 10_000))
    dev_documents: int = param(3, "with test_documents: development facts drawn as every fact of this many other documents", bounds=(1, 10_000))
    documents_min_facts: int = param(6, "with test_documents: the documents drawn hold at least this many facts", bounds=(1, 100))
    study_lrs: list = param([], "the knowledge study's rate grid: every arm (gold questions and each injection arm) trains at each rate at its first seed, then at its chosen rate with every seed of n_training_seeds ([]: the curve at lora_lr and one seed per arm)")
    arm_exposures: dict = param({}, "exposures per fact at which an injection arm is scored, by arm (an arm not named: injection_exposures)")
    paraphrase_counts: list = param([1, 3], "training paraphrases per fact: the curve trains the most, K5 sets the fewest beside it")
    curve_exposures: list = param([3, 6, 12], "exposures per fact (epochs x paraphrases) at which the knowledge curve is scored", bounds=(1, 10_000))
    k5_exposures: int = param(6, "exposures per fact at which K5 compares the paraphrase counts (one of curve_exposures)", bounds=(1, 10_000))
    sweep_exposures: int = param(12, "exposures per fact of each learning-rate sweep run (development facts): the curve's length, since a rate chosen on a short run can be too large for a long one", bounds=(1, 10_000))
    warmup_steps: int = Lora.warmup()
    lora_rank: int = Lora.rank()
    lora_alpha: int = Lora.alpha()
    lora_lr: float = Lora.lr("LoRA and QLoRA: the middle of their sweep, or their rate without one")
    full_lr: float = param(1e-4, "full fine-tuning: the middle of its sweep, or its rate without one", rate=True)
    lr_factors: list = param([0.3, 1.0, 3.0], "the sweep tries each middle learning rate times these")
    sweep_methods: list = param(["lora", "full"], "methods swept on the development facts ([]: every rate as set here)")
    train_batch_size: int = Lora.batch()
    recompute: bool = Lora.recompute()
    methods: list = param(["lora", "lora-attention", "qlora", "full"], "compared on the DSF data")
    injection_arms: list = param(["documents", "rewritten", "generated"], "knowledge-injection arms a reader could build, each trained on the documents that hold the test and development facts: documents (as they are), rewritten (each fact restated 3 ways), generated (cloze questions a rule writes from them); [] runs none")
    injection_exposures: list = param([3, 6, 12], "exposures per fact at which each injection arm is scored (multiples of 3: a rewritten document's 3 variants state each fact once each)", bounds=(3, 10_000))
    n_method_facts: int = param(16, "test facts the methods are compared on (T1, T3, K7): the first test facts", bounds=(1, 10_000))
    method_exposures: int = param(6, "exposures per fact of each method's run", bounds=(1, 10_000))
    n_training_seeds: int = param(3, "seeds of the LoRA method run: the seed spread of a trained arm", bounds=(1, 20))
    n_known: int = param(64, "real-world questions screened for facts the base model knows (NQ-Open)", bounds=(0, 2_000))
    n_format_facts: int = param(8, "test facts whose generated answers the chapter shows (every test fact is answered by generation)", bounds=(1, 10_000))
    rag_top_k: int = Retrieval.top_k(1, "chunks retrieved for the RAG rows (chapter 2: the small model reads one chunk best)")
    n_structured_test: int = param(32, "structured-output test questions (knowledge-base products; the default base holds 36)", bounds=(1, 10_000))
    n_structured_dev: int = param(16, "development products (other worlds, no test or training product's name): the JSON fine-tune is chosen on them", bounds=(1, 1_000))
    structured_sizes: list = param([10, 25, 50], "training examples (T4), one fine-tune each", bounds=(1, 100_000))
    structured_epochs: list = param([1], "epochs tried per size, chosen on the development products (several: one run to the most, a constant rate)", bounds=(1, 100))
    forgetting_chars: int = param(4000, "characters of general English text for the perplexity probe", bounds=(200, 1_000_000))
    structured_max_new_tokens: int = param(48, "a JSON record is longer than a short answer", bounds=(8, 512))

    def validate(self) -> None:
        super().validate()
        check_int_list("paraphrase_counts", self.paraphrase_counts, 1, self.kb.n_paraphrases - 1)
        top, low = max(self.paraphrase_counts), min(self.paraphrase_counts)
        check(sorted(set(self.curve_exposures)) == list(self.curve_exposures) and all(e % top == 0 for e in self.curve_exposures),
              "curve_exposures", self.curve_exposures,
              f"use increasing multiples of the most paraphrases ({top}): a checkpoint is a whole number of epochs")
        check(self.k5_exposures in self.curve_exposures and self.k5_exposures % low == 0, "k5_exposures",
              self.k5_exposures, f"use one of curve_exposures {self.curve_exposures} that is a multiple of {low}")
        check(sorted(self.structured_epochs) == list(self.structured_epochs), "structured_epochs", self.structured_epochs,
              "list the epochs in increasing order: each is a snapshot of one run")
        check(isinstance(self.injection_arms, list) and len(set(self.injection_arms)) == len(self.injection_arms)
              and set(self.injection_arms) <= {"documents", "rewritten", "generated"}, "injection_arms",
              self.injection_arms, "use [] or a list of distinct arms from documents, rewritten, generated")
        check(sorted(set(self.injection_exposures)) == list(self.injection_exposures)
              and all(e % 3 == 0 for e in self.injection_exposures), "injection_exposures", self.injection_exposures,
              "use increasing multiples of 3: a checkpoint is a whole number of epochs of every arm")
        check(isinstance(self.study_lrs, list) and all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1
                                                       for r in self.study_lrs) and sorted(set(self.study_lrs)) == list(self.study_lrs),
              "study_lrs", self.study_lrs, "use [] or increasing learning rates in (0, 1)")
        check(isinstance(self.arm_exposures, dict) and set(self.arm_exposures) <= {"documents", "rewritten", "generated"},
              "arm_exposures", self.arm_exposures, "use a mapping from injection arms (documents, rewritten, generated) to exposures")
        for arm, exposures in self.arm_exposures.items():
            per = 3 if arm == "rewritten" else 1
            check(isinstance(exposures, list) and exposures and sorted(set(exposures)) == list(exposures)
                  and all(isinstance(e, int) and e > 0 and e % per == 0 for e in exposures), "arm_exposures", self.arm_exposures,
                  f"{arm}: use increasing exposures per fact, each a whole number of its epochs ({per} per epoch)")
        for name in ("sweep_exposures", "method_exposures"):
            check(getattr(self, name) % top == 0, name, getattr(self, name), f"use a multiple of the most paraphrases ({top})")
        allowed = ["lora", "lora-attention", "qlora", "full"]
        check(isinstance(self.methods, list) and "lora" in self.methods and set(self.methods) <= set(allowed),
              "methods", self.methods, f"use a list from {allowed} that includes lora")
        check(isinstance(self.sweep_methods, list) and set(self.sweep_methods) <= set(self.methods)
              and (not self.sweep_methods or "lora" in self.sweep_methods), "sweep_methods", self.sweep_methods,
              f"use [] or a list from methods {self.methods} that includes lora")
        check(isinstance(self.lr_factors, list) and len(self.lr_factors) >= 1, "lr_factors", self.lr_factors,
              "use a non-empty list of positive factors")
        for f in self.lr_factors:
            check(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 and 0 < f * max(self.lora_lr, self.full_lr) < 1,
                  "lr_factors", self.lr_factors, "every factor times lora_lr and full_lr must stay a learning rate in (0, 1)")


@dataclass
class RaftParams(Answering):
    """Chapter 4: RAFT, set beside DSF and RAG. The DSF rows reuse chapter 3's fine-tune, with chapter
    3's parameters from the same profile."""

    n_facts: int = param(16, "test facts: chapter 3's, asked in their held-out paraphrase", bounds=(1, 100_000))
    n_unanswerable: int = param(8, "questions the knowledge base cannot answer (refusal, scored as a detector)", bounds=(0, 10_000))
    n_candidates: int = param(3, "look-alike values ranked beside the gold per question (chance 1 / (n + 1))", bounds=(1, 20))
    n_generated: int = param(16, "test facts also answered in words (contains, EM, F1)", bounds=(1, 100_000))
    n_generated_unanswerable: int = param(8, "unanswerable questions also answered in words", bounds=(0, 10_000))
    chunk_size: int = Retrieval.chunk_size(64, "tokens per chunk: the documents RAFT trains and answers on")
    rag_top_k: int = Retrieval.top_k(3, "chunks in the prompt for the main table")
    top_ks: list = Retrieval.top_k([1, 3, 5, 8], "test-time documents (F5, F6)")
    n_ablation_facts: int = param(0, "test facts the P and distractor ablations and the top-k curves ask (the first n; 0: all)", bounds=(0, 100_000))
    n_train: int = param(32, "RAFT training questions: other facts of the knowledge base, never a test fact", bounds=(1, 100_000))
    n_dev: int = param(24, "development questions RAFT's fitness is measured on: other facts, never a test or training one", bounds=(1, 10_000))
    n_distractors: int = param(3, "distractor documents per training example", bounds=(0, 50))
    p_oracle: float = param(0.8, "share of training examples that keep the oracle document (F2)")
    distractors: str = param("random", "random (the reference code) | retrieved (hard negatives)")
    p_values: list = param([0.0, 0.4, 0.8, 1.0], "P ablation (F2)")
    distractor_counts: list = param([0, 1, 3], "training distractors ablation (F5)", bounds=(0, 50))
    epochs: int = param(1, "epochs of RAFT training", bounds=(1, 100))
    lora_rank: int = Lora.rank()
    lora_alpha: int = Lora.alpha()
    lora_lr: float = Lora.lr()
    train_batch_size: int = Lora.batch(4)
    recompute: bool = Lora.recompute()
    data_dir: str = param("", "benchmark folder; empty: RAGFT_DATA_DIR, else the repository data/benchmarks", exists="folder")
    bench_train: int = param(16, "RAFT training questions per benchmark (their train split)", bounds=(1, 100_000))
    bench_test: int = param(32, "HotpotQA test questions (the data folder holds about 100 after the train split)", bounds=(1, 100_000))
    pubmedqa_test: int = param(100, "PubMedQA test questions, of its official 500", bounds=(1, 100_000))
    bench_distractors: int = param(1, "distractors per benchmark training example", bounds=(0, 8))
    pubmedqa_chunk_size: int = Retrieval.chunk_size(128, "abstracts are indexed in chunks of this many tokens")
    pubmedqa_top_k: int = Retrieval.top_k(2, "abstract chunks in the prompt", most=20)
    hotpotqa_top_k: int = Retrieval.top_k(3, "of the question's ten paragraphs", most=10)
    hotpotqa_quotes: int = param(1, "gold sentences a HotpotQA target quotes, those naming the answer first; 0 for all", bounds=(0, 10))
    bench_dsf: bool = param(False, "also train and test closed-book fine-tunes on the benchmarks")
    cot_max_new_tokens: int = param(48, "a quote and the answer", bounds=(8, 1024))
    bench_max_new_tokens: int = param(96, "a quote and the answer on the benchmarks: longer sentences, HotpotQA quotes two", bounds=(8, 1024))

    def validate(self) -> None:
        super().validate()
        check(self.rag_top_k in self.top_ks, "rag_top_k", self.rag_top_k, f"use one of top_ks {self.top_ks}")
        check(self.n_distractors in self.distractor_counts, "n_distractors", self.n_distractors,
              f"use one of distractor_counts {self.distractor_counts}")
        check_share = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
        check(check_share(self.p_oracle), "p_oracle", self.p_oracle, "use a share in [0, 1]")
        check(isinstance(self.p_values, list) and self.p_values and all(map(check_share, self.p_values))
              and self.p_oracle in self.p_values, "p_values", self.p_values,
              f"use a list of shares in [0, 1] that includes p_oracle={self.p_oracle}")
        check_tags("p_values", self.p_values, percent_tag)
        check(self.distractors in ("random", "retrieved"), "distractors", self.distractors, "use random or retrieved")


@dataclass
class FreshnessParams(Answering):
    """Chapter 5: freshness. Reads chapter 3's DSF adapter and chapter 4's RAFT adapter of the same run
    (trains them with those chapters' parameters when they have not run there)."""

    change_share: float = param(0.8, "share of the mutable facts the v2 world changes (the knowledge base's v2_change_share)")
    n_new: int = param(24, "facts about product lines that exist only in v2", bounds=(0, 100_000))
    n_candidates: int = param(3, "look-alike values ranked beside the gold (a changed fact's always hold its other value)", bounds=(1, 20))
    chunk_size: int = Retrieval.chunk_size(64, "tokens per chunk (chapter 4's, which RAFT reads)")
    rag_top_k: int = Retrieval.top_k(3, "chunks in the prompt of every reader that reads")
    replay_share: float = param(0.5, "unchanged facts replayed per changed fact in the replay update")
    update_exposures: int = param(0, "exposures per fact of each update of the fine-tune; 0: chapter 3's chosen checkpoint's", bounds=(0, 10_000))
    recompute: bool = Lora.recompute()
    cot_max_new_tokens: int = param(48, "RAFT's quote and answer", bounds=(8, 1024))

    def validate(self) -> None:
        super().validate()
        share = self.change_share
        check(isinstance(share, (int, float)) and not isinstance(share, bool) and 0.35 <= share <= 1.0, "change_share",
              share, "use a share in [0.35, 1.0] (the knowledge base's v2_change_share)")
        check(self.update_exposures % 3 == 0, "update_exposures", self.update_exposures,
              "use 0 or a multiple of 3 (the fine-tune trains on 3 paraphrases per fact: whole epochs)")
        r = self.replay_share
        check(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 10, "replay_share", r,
              "use a number in [0, 10] (unchanged facts per changed fact)")


@dataclass
class CostParams(Common):
    """Chapter 6: what it costs to serve and keep current. Tokens, latencies and training figures come
    from chapters 1-5 of the same run (or, where this run folder lacks one, the published results of
    the profile); every other input is yours to set."""

    queries_per_month: float = param(1e6, "your volume: queries a month")
    updates_per_month: float = param(1.0, "your facts change this often a month (an index is re-embedded, a closed-book fine-tune retrained)")
    serving_price: str = param("gpt-4o-mini", "serving price row of data/pricing.yaml (a fine-tune is served at its fine_tuned row)")
    training_price: str = param("gpt-4o-mini", "training price row (training section of data/pricing.yaml)")
    train_tokens: float = param(10e6, "tokens x epochs of one training run of your fine-tune (T5 prices a 10 M-token run)")
    training_life_months: float = param(6.0, "a run no update redoes is amortised over this many months (D2: retrain every 3-6)")
    docs_per_update: float = param(1000.0, "documents re-embedded per update (tokens and chunks per document as chapter 5 measured)")
    index_gb: float = param(1.0, "vector index size in GB (storage at the vector_db row's price)")
    embedding_price: str = param("text-embedding-3-small", "embedding price row")
    vector_db: str = param("pinecone_s9", "vector database price row")
    gpu_price: str = param("h100_runpod", "GPU rental row, for training cost at scale (T5)")
    gpu_utilisation: float = param(0.4, "share of the GPU's bf16 peak a training run reaches (chapter 3 measures the CPU's)")
    rag_prompt_tokens: float = param(0.0, "prompt tokens per RAG query; 0: as chapter 4 measured")
    ft_prompt_tokens: float = param(0.0, "prompt tokens per fine-tune query; 0: as chapter 4 measured")
    hybrid_prompt_tokens: float = param(0.0, "prompt tokens per hybrid (RAFT + RAG) query; 0: as chapter 4 measured")
    long_prompt_tokens: float = param(0.0, "prompt tokens per long-context prompt; 0: as chapter 1 measured")
    completion_tokens: float = param(0.0, "completion tokens per query, every approach; 0: each as measured")
    n_ttft_repeats: int = param(8, "timed prefills per approach (the long-context prompt: once, it costs seconds)", bounds=(1, 1_000))
    n_latency_repeats: int = param(10, "timed answers of the base, merged and unmerged LoRA models (T2)", bounds=(2, 1_000))
    latency_new_tokens: int = param(4, "tokens decoded per timed answer", bounds=(1, 512))
    lora_rank: int = Lora.rank("LoRA rank of the adapter timed merged and unmerged")

    NUMBERS = ("queries_per_month", "updates_per_month", "train_tokens", "docs_per_update", "index_gb",
               "rag_prompt_tokens", "ft_prompt_tokens", "hybrid_prompt_tokens", "long_prompt_tokens", "completion_tokens")

    def validate(self) -> None:
        super().validate()
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        for name in self.NUMBERS:
            value = getattr(self, name)
            check(number(value) and 0 <= value < 1e15, name, value, "use a number >= 0 (papermill: -p name 2e6)")
        check(number(self.training_life_months) and self.training_life_months > 0, "training_life_months",
              self.training_life_months, "use a number of months > 0")
        check(number(self.gpu_utilisation) and 0 < self.gpu_utilisation <= 1, "gpu_utilisation", self.gpu_utilisation,
              "use a share in (0, 1]")

        for name, section in (("serving_price", "prices"), ("training_price", "training"), ("embedding_price", "embedding"),
                              ("vector_db", "vector_db"), ("gpu_price", "gpu")):
            try:
                row(section, getattr(self, name))
            except ValueError as e:
                raise ParamError(f"parameter {name}: {e}") from None


@dataclass
class VerdictParams(Common):
    """Chapter 7: the verdict on every claim (reads the other chapters' results of the run; no model),
    and the decision helper run for your own case (ragft.decide.Reader's fields, prefixed reader_)."""

    reader_task: str = param("facts", "your case: what the model gets wrong, facts | format | both")
    reader_updates_per_month: float = param(4.0, "your case: how often the facts change, per month")
    reader_queries_per_month: float = param(1e6, "your case: queries per month")
    reader_examples: int = param(0, "your case: labelled examples of the behaviour you want", bounds=(0, 10**9))
    reader_private_documents: bool = param(True, "your case: answers must come from your own documents")
    reader_tried_prompting: bool = param(True, "your case: prompting has been tried")
    reader_rag_baseline: bool = param(False, "your case: a RAG baseline has shipped")
    reader_eval_set: bool = param(False, "your case: an evaluation set exists")
    reader_ready_to_retrain: bool = param(False, "your case: retraining every 3-6 months is planned")
    reader_prompt_cost_usd_per_month: float = param(0.0, "your case: what prompting costs now, dollars a month")
    reader_latency_budget_ms: float = param(0.0, "your case: the most an answer may take, ms (0: no budget)")

    def reader(self):
        return Reader(**{f.name: getattr(self, f"reader_{f.name}") for f in dataclasses.fields(Reader)})

    def validate(self) -> None:
        super().validate()
        try:
            self.reader()
        except ValueError as e:  # Reader names its field; the parameter carries the prefix
            raise ParamError(f"parameter reader_{e}") from None


@dataclass
class YourCaseParams(Answering):
    """Chapter 8: the ladder on your own documents and questions (the sample case by default)."""

    corpus_dir: str = param("", "your documents (.md .txt .html); empty: the sample case, data/sample_case/docs", exists="folder")
    questions_file: str = param("", "JSONL of the questions the arms are judged on, one {'question', 'answers', 'doc_id'} a line "
                                "(chapter 2's format); empty: the sample case's", exists="file")
    train_questions_file: str = param("", "JSONL of training questions (same format), which the fine-tunes train on; empty: the "
                                      "sample case's with the sample folder, none with yours", exists="file")
    max_file_mb: float = param(2.0, "larger files are skipped")
    max_questions: int = param(0, "use at most this many questions of each file, in file order (0: all; a quick first run)", bounds=(0, 10**6))
    dev_share: float = param(0.4, "share of your questions, whole source documents at a time, kept for development (every choice)")
    min_dev: int = param(4, "fewest development questions a split may leave", bounds=(1, 10_000))
    min_test: int = param(8, "fewest test questions a split may leave", bounds=(2, 100_000))
    chunk_sizes: list = Retrieval.chunk_size([64, 128], "chunk sizes tried on the development questions")
    chunk_overlap: int = param(16, "tokens shared by neighbouring chunks")
    top_ks: list = Retrieval.top_k([1, 3], "chunks per question tried on the development questions")
    retrieval: str = Retrieval.method()
    dsf_arms: list = param(["documents", "generated", "questions", "both"], "the knowledge fine-tune's arms, each trained on its "
                           "own data: documents (your documents recited from their titles), generated (cloze questions a rule "
                           "writes from them), questions (your training questions), both (documents and training questions "
                           "together); the development questions choose which stands")
    dsf_epochs: list = param([4, 8, 12], "epochs after which the fine-tune is scored on the development questions (one run, constant rate)", bounds=(1, 1_000))
    raft_epochs: int = param(2, "epochs of RAFT training; 0: no RAFT arm", bounds=(0, 1_000))
    max_train_tokens: int = param(300_000, "training tokens of both fine-tunes together (about 18 minutes of LoRA on 2 cores of the "
                                  "faster CPU kind): later checkpoints and epochs are dropped to fit, said before training; the first "
                                  "checkpoint and one RAFT epoch always train",
                                  bounds=(1_000, 10**12))
    n_distractors: int = param(2, "distractor chunks beside the oracle in a RAFT training example", bounds=(0, 50))
    p_oracle: float = param(0.8, "share of RAFT training examples that keep the oracle chunk")
    lora_rank: int = Lora.rank()
    lora_alpha: int = Lora.alpha()
    lora_lr: float = Lora.lr("LoRA learning rate (chapter 3's choice on its development facts)")
    warmup_steps: int = Lora.warmup()
    train_batch_size: int = Lora.batch()
    recompute: bool = Lora.recompute()
    cot_max_new_tokens: int = param(64, "RAFT's quote and answer", bounds=(8, 1024))
    queries_per_month: float = param(1e6, "your volume: queries a month (chapter 6's cost model)")
    updates_per_month: float = param(1.0, "your documents change this often a month (re-indexed; a closed-book fine-tune retrained)")
    serving_price: str = param("gpt-4o-mini", "serving price row of data/pricing.yaml (a fine-tune at its fine_tuned row)")
    training_price: str = param("gpt-4o-mini", "training price row (training section of data/pricing.yaml)")
    training_life_months: float = param(6.0, "a training run no update redoes is amortised over this many months")

    def validate(self) -> None:
        super().validate()
        share = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        check(share(self.dev_share) and 0.1 <= self.dev_share <= 0.8, "dev_share", self.dev_share, "use a share in [0.1, 0.8]")
        check(share(self.max_file_mb) and 0 < self.max_file_mb <= 1_000, "max_file_mb", self.max_file_mb,
              "use a size in MB in (0, 1000]")  # chapter 2's range: 0 or less would skip every file
        check(share(self.p_oracle) and 0 <= self.p_oracle <= 1, "p_oracle", self.p_oracle, "use a share in [0, 1]")
        check_int("chunk_overlap", self.chunk_overlap, 0, min(self.chunk_sizes) - 1)
        check(sorted(self.dsf_epochs) == list(self.dsf_epochs), "dsf_epochs", self.dsf_epochs, "list the epochs in increasing order")
        check(isinstance(self.dsf_arms, list) and self.dsf_arms and len(set(self.dsf_arms)) == len(self.dsf_arms)
              and set(self.dsf_arms) <= {"documents", "generated", "questions", "both"}, "dsf_arms", self.dsf_arms,
              "use a list of distinct arms from documents, generated, questions, both")
        number = lambda v: share(v) and v == v and 0 <= v < 1e15  # noqa: E731
        for name in ("queries_per_month", "updates_per_month"):
            check(number(getattr(self, name)), name, getattr(self, name), "use a number >= 0 (papermill: -p name 2e6)")
        check(number(self.training_life_months) and self.training_life_months > 0, "training_life_months",
              self.training_life_months, "use a number of months > 0")

        for name, section in (("serving_price", "prices"), ("training_price", "training")):
            try:
                row(section, getattr(self, name))
            except ValueError as e:
                raise ParamError(f"parameter {name}: {e}") from None


CHAPTER_PARAMS = {"00_front": FrontPageParams, "01_prompting": PromptingParams, "02_rag": RagParams,
                  "03_finetune": FinetuneParams, "04_raft": RaftParams, "05_freshness": FreshnessParams,
                  "06_cost": CostParams, "07_verdict": VerdictParams, "08_your_case": YourCaseParams}


# Names a notebook's namespace holds that are not parameters (IPython's own).
_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def parameters_cell(chapter: str) -> str:
    """The source of a chapter's `parameters` cell, generated from the declarations: one line per
    parameter, None meaning "the profile's value" (and for `profile`, the machine's: default_profile)."""
    fields = dataclasses.fields(CHAPTER_PARAMS[chapter])
    width = max(len(f.name) for f in fields) + len(" = None")
    lines = []
    for f in fields:
        lines.append(f"{f.name} = None".ljust(width + 1) + f"  # {f.metadata['help']}")
    return "\n".join(lines)


def from_notebook(chapter: str, namespace: dict):
    """Validated parameters from a notebook's namespace after its parameters cell (and the cell
    papermill injects): an unknown name stops the run, naming it and listing the known ones.

    In a kernel the parameters are the names that parameter cells assigned (cells of plain
    `name = literal` lines: the chapter's own and papermill's), read from the kernel's input history,
    so that re-running this cell, or the whole notebook in the same kernel, sees the same parameters
    and not the chapter's own variables. Given a bare namespace (no history), every public name in it
    counts."""
    check(chapter in CHAPTER_PARAMS, "chapter", chapter, f"use one of {sorted(CHAPTER_PARAMS)}")
    import types

    known = [f.name for f in dataclasses.fields(CHAPTER_PARAMS[chapter])]
    history = namespace.get("In")
    if isinstance(history, list):
        given = {k: namespace[k] for k in parameter_names(history) if k in namespace}
    else:
        given = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in _NOT_PARAMETERS
                 and not isinstance(v, (types.ModuleType, types.FunctionType, type))}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParamError(f"unknown parameter(s) {unknown} for chapter {chapter}: it takes {known}")
    profile = given.pop("profile", None)
    if not profile:
        profile = default_profile()
        params = resolve(chapter, profile, **given)
        if params.online:
            print(f"No profile was given and a CUDA GPU is here, so this chapter runs the {profile!r} profile, which "
                  "goes online to load hub models. To stay offline, set profile = \"cpu\" in the parameters cell "
                  "(papermill: -p profile cpu).")
        return params
    params = resolve(chapter, profile, **given)
    refuse_without_cuda(params)  # in the parameters cell, before any cell can go online
    return params


def parameter_names(cells: list[str]) -> list[str]:
    """The names assigned by parameter cells among executed cell sources: cells whose every statement
    is `name = <literal>` (papermill writes its injected cell so, and the chapter's parameters cell
    is generated so); other cells, and code that does not parse, are not parameter cells."""
    import ast

    names: list[str] = []
    for source in cells:
        try:
            body = ast.parse(source or "").body
        except SyntaxError:
            continue
        if not body or not all(isinstance(st, ast.Assign) and len(st.targets) == 1
                               and isinstance(st.targets[0], ast.Name) and _is_literal(st.value) for st in body):
            continue
        names += [st.targets[0].id for st in body if st.targets[0].id not in names]
    return names


def _is_literal(node) -> bool:
    import ast

    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


LOOPBACK = ("localhost", "127.0.0.1", "::1")  # this machine: a server here is no network call out


def default_profile() -> str:
    """The profile a notebook opened without one runs: gpu where a CUDA device is (Colab), else cpu."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def load_profile(profile: str) -> dict:
    check(profile in PROFILES, "profile", profile, f"use one of {list(PROFILES)}")
    with open(PROFILE_DIR / f"{profile}.yaml") as f:
        return yaml.safe_load(f) or {}


def resolve(chapter: str, profile: str, **overrides):
    """The chapter's validated parameters: profile values (its `sample_case` ones only where no
    corpus_dir is given), then the non-None overrides."""
    check(chapter in CHAPTER_PARAMS, "chapter", chapter, f"use one of {sorted(CHAPTER_PARAMS)}")
    cls = CHAPTER_PARAMS[chapter]
    data = load_profile(profile)
    values = {**(data.get("common") or {}), **((data.get("chapters") or {}).get(chapter) or {})}
    # a profile's `sample_case` values apply to the chapter's own sample alone: a reader's documents
    # (corpus_dir) keep the declared defaults, and a reader's own values win over both
    sample_only = values.pop("sample_case", None) or {}
    check(isinstance(sample_only, dict), "sample_case", sample_only, "a mapping of parameter names to values")
    if not overrides.get("corpus_dir") and not values.get("corpus_dir"):
        values.update(sample_only)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["profile"] = profile
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    check(not unknown, "overrides", unknown, f"{chapter} takes {sorted(names)}")
    kb = values.pop("kb", None) or {}
    try:
        values["kb"] = KBSizes(**kb)
    except TypeError as e:
        raise ParamError(f"parameter kb={kb!r} is not allowed: {e}") from None
    except ValueError as e:
        raise ParamError(f"parameter {e}") from None
    params = cls(**values)
    params.validate()
    return params


def as_dict(params) -> dict:
    return dataclasses.asdict(params)


def as_table(params):
    """The resolved parameters as a two-column table, for the notebook's validation cell."""
    import pandas as pd

    flat = {k: v for k, v in as_dict(params).items() if k != "kb"}
    flat.update({f"kb.{k}": v for k, v in as_dict(params)["kb"].items()})
    return pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=pd.Index(list(flat), name="parameter"))

