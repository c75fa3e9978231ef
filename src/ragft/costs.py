"""What serving and keeping an approach current costs a month, from tokens per query and the price
table (data/pricing.yaml, dated and cited); and the articles' cost figures (S1-S9, T5) rebuilt from
the inputs they state.

The monthly cost of an approach is a straight line in the query volume q: fixed + per_query * q.
  per query   prompt and completion tokens at the serving row's prices; with retrieval, the query's
              embedding and one vector-database read
  fixed       with retrieval: index storage, and per update its re-embedding and vector writes;
              a trained approach: its training runs, one per update when an update means retraining
              (a closed-book fine-tune), else one per `training_life_months` (a run is amortised)
Two lines cross once at most, so every crossover volume is one division.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml

from .constants import DEPENDS, PROJECT_ROOT
from .stats import CONTRADICTED, SUPPORTED

PRICING_FILE = PROJECT_ROOT / "data" / "pricing.yaml"
SECTIONS = ("prices", "training", "embedding", "vector_db", "gpu", "stated")


# The keys every row of a section needs (`stated` holds the articles' own figures, of many shapes)
REQUIRED = {"prices": ("input_per_mtok", "output_per_mtok", "source"), "training": ("per_mtok", "source"),
            "embedding": ("per_mtok", "source"), "vector_db": ("gb_month", "reads_per_m", "writes_per_m", "source"),
            "gpu": ("per_hour", "peak_tflops_bf16", "source")}
NULLABLE = {("prices", "output_per_mtok")}  # a source that quotes an input price only


@lru_cache(maxsize=1)
def _table() -> dict:
    with open(PRICING_FILE) as f:
        return validate_table(yaml.safe_load(f), PRICING_FILE)


def validate_table(table, path) -> dict:
    """The price table as loaded, refused with the file, row and key named when a section or a key is
    missing, a price is not a number, or a number is negative or not finite."""
    import math

    def bad(where: str, what: str):
        raise ValueError(f"{path}: {where}: {what}")

    if not isinstance(table, dict):
        bad("the file", "not a mapping of sections")
    for section in ("as_of", *SECTIONS):
        if section not in table:
            bad(section, "missing")

    def numbers(where: str, value):
        if isinstance(value, bool):
            bad(where, f"{value!r} is not a number")
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or value < 0:
                bad(where, f"{value!r}: use a finite number >= 0")
        elif isinstance(value, dict):
            for k, v in value.items():
                numbers(f"{where}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                numbers(f"{where}[{i}]", v)

    for section in SECTIONS:
        rows = table[section]
        if not isinstance(rows, dict) or not rows:
            bad(section, "needs rows (a mapping of row names to their values)")
        for name, row_ in rows.items():
            where = f"{section}.{name}"
            if not isinstance(row_, dict):
                bad(where, "a row is a mapping of keys to values")
            for key in REQUIRED.get(section, ("source",)):
                if key not in row_:
                    bad(where, f"missing {key!r}")
                value = row_[key]
                if key == "source":
                    if not isinstance(value, str) or not value.strip():
                        bad(f"{where}.source", "every row names its source")
                elif value is None and (section, key) in NULLABLE:
                    continue
                elif not isinstance(value, (int, float)) or isinstance(value, bool):
                    bad(f"{where}.{key}", f"{value!r} is not a number")
            numbers(where, {k: v for k, v in row_.items() if k not in ("source", "fine_tuned")})
    return table


def load_prices() -> dict[str, dict]:
    """The serving rows: dollars per million input (and output) tokens."""
    return _table()["prices"]


def prices_as_of() -> str:
    return _table()["as_of"]


def row(section: str, name: str) -> dict:
    """One row of the price table; an unknown name is an error that lists the rows there are."""
    if section not in SECTIONS:
        raise ValueError(f"section={section!r} is not allowed: use one of {list(SECTIONS)}")
    rows = _table()[section]
    if name not in rows:
        raise ValueError(f"{name!r} is not a row of {section} in data/pricing.yaml: use one of {sorted(rows)}")
    return rows[name]


def cost_per_1k_queries(prompt_tokens: float, completion_tokens: float, price: str) -> float:
    """Dollars per 1,000 queries at the mean token counts; a row without an output price (its source
    quotes input only) prices completion tokens at 0, and says so (`output_unpriced`)."""
    p = row("prices", price)
    dollars = prompt_tokens * p["input_per_mtok"] / 1e6
    if p.get("output_per_mtok") is not None:
        dollars += completion_tokens * p["output_per_mtok"] / 1e6
    return 1000 * dollars


def output_unpriced(price: str) -> str | None:
    """The sentence to show where a row without an output price is used; None when it has one."""
    if row("prices", price).get("output_per_mtok") is None:
        return (f"{price!r} has no output price (its source quotes input tokens only): completion tokens "
                "cost nothing in its rows")
    return None


def fine_tuned_row(price: str) -> str:
    """The row that serves a fine-tune of `price`'s model (itself where the table names none)."""
    return row("prices", price).get("fine_tuned") or price


# ---------------------------------------------------------------------------------------------
# The cost model


@dataclass(frozen=True)
class Approach:
    name: str
    prompt_tokens: float  # per query, measured
    completion_tokens: float
    price: str  # serving row of the price table
    retrieval: bool = False  # pays a query embedding and a read, index storage, re-indexing per update
    trained: bool = False  # pays training runs
    retrain_on_update: bool = False  # an update of the facts is a new training run

    def __post_init__(self):
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{self.name}: {name}={value!r} is not allowed: use a number >= 0")
        row("prices", self.price)


@dataclass(frozen=True)
class Workload:
    """Everything but the approaches: volumes, updates, training and retrieval inputs, price rows."""

    queries_per_month: float
    updates_per_month: float = 0.0
    train_tokens: float = 10e6  # tokens x epochs of one training run
    training: str = "gpt-4o-mini"  # training price row
    training_life_months: float = 6.0  # a run not redone by an update is amortised over this
    reindex_tokens: float = 0.0  # tokens embedded per update
    writes_per_update: float = 0.0  # vectors written per update
    query_tokens: float = 16.0  # tokens embedded per query
    embedding: str = "text-embedding-3-small"
    vector_db: str = "pinecone_s9"
    index_gb: float = 1.0

    def __post_init__(self):
        for name in ("queries_per_month", "updates_per_month", "train_tokens", "reindex_tokens",
                     "writes_per_update", "query_tokens", "index_gb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r} is not allowed: use a number >= 0")
        life = self.training_life_months
        if isinstance(life, bool) or not isinstance(life, (int, float)) or not life > 0:
            raise ValueError(f"training_life_months={life!r} is not allowed: use a number > 0")
        row("training", self.training), row("embedding", self.embedding), row("vector_db", self.vector_db)


def training_run_usd(w: Workload) -> float:
    return w.train_tokens * row("training", w.training)["per_mtok"] / 1e6


def monthly_parts(a: Approach, w: Workload, queries_per_month: float | None = None) -> dict[str, float]:
    """Dollars a month by what they pay for: serving, retrieval, index (storage and updates), training."""
    q = w.queries_per_month if queries_per_month is None else queries_per_month
    parts = {"serving": q * cost_per_1k_queries(a.prompt_tokens, a.completion_tokens, a.price) / 1000,
             "retrieval": 0.0, "index": 0.0, "training": 0.0}
    if a.retrieval:
        embed, db = row("embedding", w.embedding)["per_mtok"] / 1e6, row("vector_db", w.vector_db)
        parts["retrieval"] = q * (w.query_tokens * embed + db["reads_per_m"] / 1e6)
        parts["index"] = w.index_gb * db["gb_month"] + w.updates_per_month * (
            w.reindex_tokens * embed + w.writes_per_update * db["writes_per_m"] / 1e6)
    if a.trained:
        runs = max(w.updates_per_month if a.retrain_on_update else 0.0, 1 / w.training_life_months)
        parts["training"] = runs * training_run_usd(w)
    return parts


def monthly_usd(a: Approach, w: Workload, queries_per_month: float | None = None) -> float:
    return sum(monthly_parts(a, w, queries_per_month).values())


def line(a: Approach, w: Workload) -> tuple[float, float]:
    """(fixed dollars a month, dollars per query): the monthly cost is fixed + per_query * q."""
    fixed = monthly_usd(a, w, 0.0)
    return fixed, monthly_usd(a, w, 1.0) - fixed


def crossover(a: Approach, b: Approach, w: Workload) -> float | None:
    """Queries a month above which `a` costs less than `b` (0: at every volume); None when `a` is never
    cheaper (it costs as much or more per query and has no lower fixed cost)."""
    (fa, pa), (fb, pb) = line(a, w), line(b, w)
    if pa >= pb:
        return 0.0 if fa < fb and pa == pb else None
    return max(0.0, (fa - fb) / (pb - pa))


def cheapest(approaches: list[Approach], w: Workload) -> str:
    return min(approaches, key=lambda a: monthly_usd(a, w)).name


def model_from_results(doc: dict) -> tuple[dict[str, Approach], Workload]:
    """Chapter 6's approaches (measured tokens, price rows) and workload, from its results file."""
    m = doc["tables"]["cost_model"]
    return {n: Approach(**a) for n, a in m["approaches"].items()}, Workload(**m["workload"])


# ---------------------------------------------------------------------------------------------
# Training compute


def train_flops(params: float, tokens: float, full: bool) -> float:
    """The standard estimate: 6 N D for full fine-tuning (forward 2, backward 4 per parameter and
    token), 4 N D when the weights are frozen (LoRA: no weight gradients), as ragft.train.measure counts."""
    return (6 if full else 4) * params * tokens


def gpu_hours(flops: float, gpu: str, utilisation: float) -> float:
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation={utilisation!r} is not allowed: use a share in (0, 1]")
    return flops / (row("gpu", gpu)["peak_tflops_bf16"] * 1e12 * utilisation) / 3600


def train_usd(params: float, tokens: float, full: bool, gpu: str, utilisation: float) -> float:
    """Dollars of rented GPU time for one run (GPU-hours are the same on one GPU or eight)."""
    return gpu_hours(train_flops(params, tokens, full), gpu, utilisation) * row("gpu", gpu)["per_hour"]


# ---------------------------------------------------------------------------------------------
# The articles' figures, rebuilt. Each check gives its verdict by one rule:
#   the figure does not follow from the inputs its source states        -> contradicted
#   it follows (or needs an input the source leaves out, named in `note`),
#   and this book's measured inputs land where the claim says            -> supported
#   ... and they land elsewhere, or it needs an unstated input            -> depends (on that input)

REL_TOL = 0.01  # a stated figure is reproduced when within 1 % (the articles round)


@dataclass
class Check:
    claim: str  # claim id and part, as the claims file lists it (S4-arithmetic)
    stated: str
    computed: str
    verdict: str
    note: str

    def as_comparison(self) -> dict:
        """The check in the results file's `comparisons`, beside the paired ones (no n: it is arithmetic)."""
        return {"claim": self.claim, "a": "stated", "b": "rebuilt", "n": None, "diff": None, "ci_low": None,
                "ci_high": None, "p": None, "verdict": self.verdict, "kind": "computed", "note": self.note,
                "stated": self.stated, "computed": self.computed}


def stated(claim: str) -> dict:
    return row("stated", claim)


def close(a: float, b: float, rel: float = REL_TOL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def rule(follows: bool, lands: bool, unstated: str = "") -> str:
    if not follows:
        return CONTRADICTED
    return SUPPORTED if lands and not unstated else DEPENDS


def usd(x: float) -> str:
    return f"${x:,.0f}" if abs(x) >= 100 else f"${x:,.2f}" if abs(x) >= 0.1 else f"${x:,.4f}"


def check_s2(retrieval_ms: float, rag_first_token_ms: float) -> Check:
    """RAG's 700 ms to the first token split into embed, search, rerank and first token, beside the
    fine-tune's and the hybrid's: does each total add up from its stages (a hybrid embeds and searches
    too), and what share of RAG's time retrieval takes here (measured) against there."""
    s = stated("S2")
    st, tft = s["stages_ms"], s["to_first_token_ms"]
    sums = {"RAG": sum(st.values()), "fine-tune": st["first_token"],
            "hybrid": st["embed"] + st["search"] + st["first_token"]}
    mismatched = [f"the {k}'s stated {tft[k]} ms is not its stages' {sums[k]} ms" for k in tft if not close(sums[k], tft[k], 0.05)]
    share_here = retrieval_ms / rag_first_token_ms
    return Check("S2-arithmetic", ", ".join(f"{k} {v} ms" for k, v in tft.items()),
                 f"retrieval {share_here:.1%} of RAG's time to first token here",
                 rule(not mismatched, False, "hardware"),
                 f"its stages add up to {', '.join(f'{k} {v} ms' for k, v in sums.items())}: "
                 + ("; ".join(mismatched) if mismatched else "each figure matches its stages")
                 + f". Here retrieval is {share_here:.1%} of RAG's time to first token, against "
                 f"{(st['embed'] + st['search']) / tft['RAG']:.0%} in the source: prefill of the retrieved text decides it")


def check_s3(rag: Approach) -> Check:
    """$0.10-1.55 per 1,000 queries with a GPT-4-class model and 2 K retrieved tokens."""
    s = stated("S3")
    low, high = s["usd_per_1k_queries"]
    at_class = {m: cost_per_1k_queries(s["retrieved_tokens"], 0, m) for m in s["model_class"]}
    follows = any(low * (1 - REL_TOL) <= v <= high * (1 + REL_TOL) for v in at_class.values())
    measured = cost_per_1k_queries(rag.prompt_tokens, rag.completion_tokens, rag.price)
    lands = low <= measured <= high
    implied = (1000 * low / s["retrieved_tokens"], 1000 * high / s["retrieved_tokens"])
    note = (f"{s['retrieved_tokens']:,} tokens at a GPT-4-class input price cost "
            + ", ".join(f"{usd(v)} ({m})" for m, v in at_class.items())
            + f" per 1,000 queries; the range needs ${implied[0]:.3g}-{implied[1]:.3g} per million input tokens, "
            f"a mini-class price. This book's RAG prompt ({rag.prompt_tokens:.0f} + {rag.completion_tokens:.0f} "
            f"tokens) at {rag.price}: {usd(measured)} per 1,000")
    return Check("S3-arithmetic", f"{usd(low)}-{usd(high)} per 1,000 queries", usd(measured), rule(follows, lands), note)


def s4_rebuilt() -> dict[float, float]:
    """S4's monthly dollars at each of its volumes, from its own tokens and price."""
    s = stated("S4")
    return {float(q): q * cost_per_1k_queries(s["retrieved_tokens"], 0, s["price_row"]) / 1000 for q in s["monthly_usd"]}


def check_s4(rag: Approach) -> tuple[Check, dict[float, float]]:
    """500 retrieved tokens at $1.75 per million: $8,750 / $43,750 / $87,500 a month at 10 / 50 / 100 M."""
    s = stated("S4")
    rebuilt = s4_rebuilt()
    follows = all(close(rebuilt[float(q)], v) for q, v in s["monthly_usd"].items())
    measured = {q: q * cost_per_1k_queries(rag.prompt_tokens, 0, s["price_row"]) / 1000 for q in rebuilt}
    lands = all(close(measured[q], rebuilt[q], 0.25) for q in rebuilt)
    q0 = min(rebuilt)
    note = (f"{s['retrieved_tokens']} tokens x ${row('prices', s['price_row'])['input_per_mtok']} per million "
            f"rebuilds {', '.join(usd(v) for v in rebuilt.values())}; this book's RAG prompt holds "
            f"{rag.prompt_tokens:.0f} tokens, so at {q0 / 1e6:g} M queries it is {usd(measured[q0])} a month"
            + ("" if lands else ": the figure depends on the prompt length it assumes"))
    return Check("S4-arithmetic", ", ".join(usd(v) for v in s["monthly_usd"].values()),
                 ", ".join(usd(v) for v in measured.values()), rule(follows, lands, "" if lands else "tokens"),
                 note), measured


def s5_from_table() -> tuple[float, dict[str, float]]:
    """S5's own table: (the fine-tune-vs-RAG crossover interpolated between its rows, and each approach's
    largest distance from a straight line through its 10 K and 1 M rows, as a share of the cost)."""
    t = stated("S5")["monthly_usd"]
    off = {}
    for name, pts in t.items():
        (q0, c0), (q1, c1), (q2, c2) = sorted((float(q), float(c)) for q, c in pts.items())
        slope = (c2 - c0) / (q2 - q0)
        off[name] = abs(c0 + slope * (q1 - q0) - c1) / c1
    gaps = sorted((float(q), t["RAG"][q] - t["fine-tune"][q]) for q in t["RAG"])
    cross = None
    for (qa, ga), (qb, gb) in zip(gaps, gaps[1:]):
        if ga < 0 <= gb:
            cross = qa + (qb - qa) * (-ga) / (gb - ga)
    return cross, off


def check_s5_table() -> Check:
    """Its cost table against its stated crossover, and against any fixed price per token."""
    s = stated("S5")
    cross, off = s5_from_table()
    low, high = s["crossover_calls_per_month"]
    linear = all(v <= 0.05 for v in off.values())
    inside = cross is not None and low <= cross <= high
    where = "never" if cross is None else f"{cross:,.0f} calls a month"
    note = (f"between its own rows the fine-tune line crosses the RAG line {'at ' if cross is not None else ''}{where}"
            + ("" if inside else f", not {low:,}-{high:,}") + "; "
            + ("its rows fit straight lines" if linear else
               "no fixed price per token and monthly fee fits its rows (each approach's middle row is "
               + ", ".join(f"{k} {v:.0%}" for k, v in off.items()) + " off the straight line through the other two)"))
    return Check("S5-table", f"crossover {low:,}-{high:,} calls a month", f"{where} from its own table",
                 rule(inside and linear, True), note)


def range_check(claim: str, measured: float, low: float, high: float, what: str, unit, depends_on: str) -> Check:
    """A measured figure against the range a claim states: inside supports it, outside it depends."""
    lands = low <= measured <= high
    note = f"{what}: {unit(measured)} here, {'inside' if lands else 'outside'} the stated {unit(low)} to {unit(high)}"
    if not lands:
        note += f"; it depends on {depends_on}"
    return Check(claim, f"{unit(low)} to {unit(high)}", unit(measured), rule(True, lands), note)


def check_s8(long_prompt: Approach, tuned: Approach) -> tuple[Check, float]:
    """3,800 -> 180 prompt tokens cut the bill by 73 %: the completion length that makes it so, at the
    fine-tuned row's premium, and the saving this book measured (chapter 3's long prompt vs its LoRA)."""
    s = stated("S8")
    base, ft = long_prompt.price, tuned.price
    pb, pf = row("prices", base), row("prices", ft)
    # 1 - (P_ft in_ft + c out_ft) / (P_long in_b + c out_b) = saving, solved for the completion tokens c
    target = 1 - s["saving"]
    per_completion = (pf["output_per_mtok"] or 0) - target * (pb["output_per_mtok"] or 0)
    prompt_gap = target * s["long_prompt_tokens"] * pb["input_per_mtok"] - s["fine_tuned_prompt_tokens"] * pf["input_per_mtok"]
    prompt_only = 1 - s["fine_tuned_prompt_tokens"] * pf["input_per_mtok"] / (s["long_prompt_tokens"] * pb["input_per_mtok"])
    measured = 1 - (cost_per_1k_queries(tuned.prompt_tokens, tuned.completion_tokens, ft)
                    / cost_per_1k_queries(long_prompt.prompt_tokens, long_prompt.completion_tokens, base))
    if per_completion > 0:  # completions cost the fine-tune more: some completion length gives the saving
        c = prompt_gap / per_completion
        follows, needs = c >= 0, f"about {c:.0f} completion tokens a query, which the source does not state"
    else:  # rows without output prices (or no premium): the prompt alone decides
        follows = close(prompt_only, s["saving"], 0.02)
        needs = f"prices these rows do not give (prompt tokens alone save {prompt_only:.0%})"
    note = (f"prompt tokens alone, at {ft} against {base}, would save {prompt_only:.0%}; {s['saving']:.0%} needs "
            f"{needs}. This book's fine-tune "
            f"(chapter 3's structured output: {long_prompt.prompt_tokens:.0f} -> {tuned.prompt_tokens:.0f} "
            f"prompt tokens) " + (f"saves {measured:.0%}" if measured >= 0 else f"costs {-measured:.0%} more")
            + " at these rows, completions included")
    return Check("S8-arithmetic", f"{s['saving']:.0%}", f"{measured:.0%}", rule(follows, False, "completion tokens"),
                 note), measured


def check_s9() -> tuple[Check, float]:
    """$1,532 a month for 50 M reads and 6 M writes: the storage it must include."""
    s = stated("S9")
    db = row("vector_db", s["price_row"])
    operations = s["reads_per_month"] * db["reads_per_m"] / 1e6 + s["writes_per_month"] * db["writes_per_m"] / 1e6
    gb = (s["monthly_usd"] - operations) / db["gb_month"]
    note = (f"reads and writes come to {usd(operations)}; the remaining {usd(s['monthly_usd'] - operations)} is "
            f"{gb:,.0f} GB of storage at ${db['gb_month']} per GB-month, which the source does not state")
    return Check("S9-arithmetic", usd(s["monthly_usd"]), f"{usd(operations)} + storage", rule(gb >= 0, False, "storage"),
                 note), gb


def check_t5_lora_70b(gpu: str, utilisation: float, tokens: float) -> tuple[Check, float]:
    """A 70B LoRA on 8 H100s for 4 h at $200-600: the GPU-hour price that implies, the tokens those
    hours train at `utilisation`, and what `tokens` cost at the `gpu` row."""
    s = stated("T5")["lora_70b"]
    hours = s["gpus"] * s["hours"]
    low, high = (v / hours for v in s["usd"])
    g = row("gpu", gpu)
    trained = hours * 3600 * g["peak_tflops_bf16"] * 1e12 * utilisation / train_flops(s["params"], 1, full=False)
    cost = train_usd(s["params"], tokens, False, gpu, utilisation)
    lands = low <= g["per_hour"] <= high
    stated_usd = f"${s['usd'][0]:,}-{s['usd'][1]:,}"
    note = (f"{hours} GPU-hours at {stated_usd} is ${low:.2f}-{high:.2f} per GPU-hour ({gpu}: ${g['per_hour']}); those hours "
            f"train about {trained / 1e6:,.0f} M tokens at {utilisation:.0%} utilisation, while {tokens / 1e6:,.0f} M tokens "
            f"cost {usd(cost)}")
    return Check("T5-lora-70b", stated_usd, usd(cost), rule(True, lands, "" if lands else "the GPU-hour price and the tokens"),
                 note), cost


def check_t5_api() -> Check:
    """GPT-4.1 training at $25 per million tokens: 20 M tokens about $500."""
    s = stated("T5")["gpt-4.1"]
    cost = s["train_tokens"] * row("training", s["price_row"])["per_mtok"] / 1e6
    follows = close(cost, s["usd"])
    return Check("T5-api", usd(s["usd"]), usd(cost), rule(follows, True),
                 f"{s['train_tokens'] / 1e6:.0f} M tokens x ${row('training', s['price_row'])['per_mtok']} per million = {usd(cost)}")
