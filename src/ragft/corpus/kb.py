"""The synthetic knowledge base: a fictional world no pretrained model can know.

Two fictional companies sell product lines whose models have look-alike names (Corvane X2, Corvane
X3 ...). Every product, person, site and policy gets a short document of a few paragraphs written
from templates, with two kinds of trap: look-alike entities (siblings in the same product line) and
same-entity distractor sentences (a spare part's price next to the product's price). Every question
carries its gold answer with aliases, the documents that answer it and the gold sentence.

Question kinds:
  single        one fact from one document
  multihop      two documents: product -> its designer or site -> an attribute of that
  unanswerable  the right answer is a refusal (undocumented attribute, or a product that does not exist)
  structured    answer as JSON with given fields (for the behaviour experiments)

Each question has several paraphrases; one, drawn per question, is the test paraphrase and the
others are training paraphrases, so a test phrasing is never trained on.

Version v2 of the world changes a share of the mutable facts (prices, dates, policy terms,
head counts) and adds new products, for the freshness experiments. Everything is drawn from
`random.Random(seed)` in a fixed order, so a seed and the sizes determine the corpus exactly.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..constants import REFUSAL_ANSWER
from ..metrics import normalize


# Invented words; checked not to be common English or well-known brands.
_SERIES = [
    "Corvane", "Talvik", "Ostrel", "Brisma", "Quellon", "Vantor", "Mirrane", "Skelda", "Pontrae",
    "Hadrel", "Zephin", "Orvast", "Kestrin", "Lumara", "Drevik", "Fennick", "Yarrow", "Tesmar",
    "Ulvane", "Grisant", "Nodrea", "Palvin", "Seldra", "Voskar",
]
_KINDS = [
    ("field router", "mining crews"), ("thermal camera", "building inspectors"),
    ("water sensor", "municipal utilities"), ("label printer", "warehouse teams"),
    ("air monitor", "cleanroom operators"), ("torque driver", "assembly lines"),
    ("radio beacon", "rescue services"), ("soil probe", "vineyards"),
    ("barcode scanner", "parcel depots"), ("power logger", "solar farms"),
    ("flow meter", "breweries"), ("vibration tag", "wind turbines"),
]
_FIRST = [
    "Ilse", "Tomasz", "Renata", "Oskar", "Yuki", "Dario", "Maren", "Bastien", "Leena", "Caius",
    "Odile", "Femi", "Sanne", "Jarek", "Priya", "Anouk", "Lucan", "Mirela", "Teodor", "Ines",
    "Vesna", "Hakon", "Delphine", "Rafael", "Zofia", "Emeka", "Liesel", "Soren", "Aurelia", "Kenji",
]
_LAST = [
    "Marrow", "Quintel", "Vasquel", "Brandt", "Okonkwo", "Hallberg", "Dimitrov", "Ferrante",
    "Lindqvist", "Tanaka", "Moreau", "Sadowski", "Achterberg", "Castellan", "Novak", "Rasmussen",
    "Ilves", "Petrakis", "Wendling", "Oyelaran", "Harrowgate", "Kovalenko", "Beaumont", "Strand",
]
_SITES = [
    "Tessaly", "Brockmere", "Valdane", "Orrin Falls", "Kesterby", "Marlow Reach", "Hollin",
    "Quarrington", "Eskbridge", "Fenwold", "Caddonfoot", "Ravensholt", "Dunmarrow", "Ludwick",
]
_ROLES = [
    "head of acoustics", "firmware lead", "industrial designer", "quality manager",
    "test engineer", "supply planner", "field support lead", "materials scientist",
    "safety officer", "product manager",
]
_POLICY_TOPICS = [
    ("Returns Policy", "returned for a full refund"),
    ("Travel Expense Policy", "claimed back after a business trip"),
    ("Remote Work Policy", "approved for working from home"),
    ("Equipment Loan Policy", "borrowed from the tool library"),
    ("Training Budget Policy", "spent on courses and conferences"),
    ("Supplier Payment Policy", "paid to a new supplier"),
    ("Overtime Policy", "worked as paid overtime"),
    ("Data Retention Policy", "kept in the customer archive"),
]
_COMPANIES = ["Halvorsen Dynamics", "Pellucid Works"]
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]
_UNDOCUMENTED = {  # attributes some products lack: asking for them is unanswerable
    "weight": "How much does the {name} weigh?",
    "code": "What is the catalogue code of the {name}?",
}


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    kind: str  # product | person | site | policy
    version: str
    entity: str


QUESTION_KINDS = ("single", "multihop", "unanswerable", "structured")


@dataclass(frozen=True)
class Question:
    qid: str
    kind: str  # single | multihop | unanswerable | structured
    attribute: str
    paraphrases: tuple[str, ...]
    test_index: int  # which paraphrase is held out for testing
    answer: str  # gold answer; REFUSAL_ANSWER for unanswerable; JSON text for structured
    aliases: tuple[str, ...]  # other strings that count as the gold answer
    doc_ids: tuple[str, ...]  # documents that hold the answer (empty for unanswerable)
    gold_sentences: tuple[str, ...]  # the sentences that state it
    entity: str
    fields: dict | None = None  # structured: field name -> gold value
    related_doc_ids: tuple[str, ...] = ()  # unanswerable: the entity's own or its look-alike's document
    changed_in_v2: bool = False

    @property
    def test_text(self) -> str:
        return self.paraphrases[self.test_index]

    @property
    def train_texts(self) -> list[str]:
        return [p for i, p in enumerate(self.paraphrases) if i != self.test_index]

    @property
    def answers(self) -> list[str]:
        return [self.answer, *self.aliases]

    @property
    def context_doc_ids(self) -> tuple[str, ...]:
        """The documents to show with the question: the gold ones, or for an unanswerable question
        the nearest ones (which do not hold the answer)."""
        return self.doc_ids or self.related_doc_ids


@dataclass(frozen=True)
class KBSizes:
    """How big the world is. Each product line has `models_per_series` look-alike products."""

    n_series: int = 12
    models_per_series: int = 3
    n_people: int = 24
    n_sites: int = 8
    n_policies: int = 8
    n_paraphrases: int = 4
    v2_change_share: float = 0.4  # share of mutable facts that change in v2 (about 1 fact in 4 overall)
    v2_new_series: int = 2

    def __post_init__(self):
        limits = {
            "n_series": (1, len(_SERIES) - 2), "models_per_series": (1, 4),  # 2 names kept for v2
            "n_people": (2, len(_FIRST) * 4), "n_sites": (2, len(_SITES)),
            "n_policies": (1, len(_POLICY_TOPICS)), "n_paraphrases": (2, 4),
            "v2_new_series": (0, 2),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"kb.{name}={value!r} is not allowed: use an integer in [{lo}, {hi}]")
        if not 0.35 <= self.v2_change_share <= 1.0:
            raise ValueError(f"kb.v2_change_share={self.v2_change_share!r}: use a share in [0.35, 1.0] "
                             "(v2 must change at least 20 % of all facts; about 60 % of them are mutable)")


@dataclass
class KnowledgeBase:
    version: str
    seed: int
    documents: list[Document]
    questions: list[Question]

    def doc(self, doc_id: str) -> Document:
        return self._by_id[doc_id]

    def __post_init__(self):
        self._by_id = {d.doc_id: d for d in self.documents}

    def by_kind(self, kind: str) -> list[Question]:
        return [q for q in self.questions if q.kind == kind]

    def sample(self, kind: str, n: int, seed: int) -> list[Question]:
        """n questions of a kind, drawn reproducibly (all of them when there are fewer)."""
        if kind not in QUESTION_KINDS:
            raise ValueError(f"kind={kind!r} is not allowed: use one of {list(QUESTION_KINDS)}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n={n!r} is not allowed: use an integer >= 0")
        pool = self.by_kind(kind)
        if n > len(pool):  # all of them, and said so: a chapter's n is then smaller than asked
            print(f"asked for {n} {kind} questions; this knowledge base holds {len(pool)}: using all {len(pool)}")
        return random.Random(f"{seed}:{kind}").sample(pool, min(n, len(pool)))

    def questions_about_documents(self, n: int, seed: int, prefix: str = "product-") -> tuple[list[Document], list[Question]]:
        """Documents drawn at random (ids starting with `prefix`), with all their single-fact
        questions, until there are n questions: a few documents that many questions are asked about."""
        by_doc = {d: qs for d, qs in self.singles_by_document().items() if d.startswith(prefix)}
        docs, questions = [], []
        for doc_id in random.Random(seed).sample(sorted(by_doc), len(by_doc)):
            if len(questions) >= n:
                break
            docs.append(self.doc(doc_id))
            questions += by_doc[doc_id]
        return docs, questions[:n]

    def singles_by_document(self) -> dict[str, list[Question]]:
        """{document id: the single facts it holds}, each list in the knowledge base's order."""
        by_doc: dict[str, list[Question]] = {}
        for q in self.by_kind("single"):
            by_doc.setdefault(q.doc_ids[0], []).append(q)
        return by_doc

    def documents_drawn(self, n: int, seed: int, min_facts: int = 1, exclude: tuple[str, ...] = ()) -> list[str]:
        """n document ids drawn reproducibly among the documents that hold at least `min_facts` single
        facts (the richer ones), none of `exclude`: a study whose cost grows with its documents (a
        fine-tune on the documents themselves) asks every fact of a few of them."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n={n!r} is not allowed: use an integer >= 0")
        pool = sorted(d for d, qs in self.singles_by_document().items() if len(qs) >= min_facts and d not in set(exclude))
        if n > len(pool):
            raise ValueError(f"asked for {n} documents with at least {min_facts} facts; this knowledge base holds "
                             f"{len(pool)} (after {len(exclude)} excluded): ask fewer, lower min_facts or grow the base")
        return random.Random(f"{seed}:documents").sample(pool, n)

    def facts_of(self, doc_ids: list[str]) -> list[Question]:
        """Every single fact each document holds, document by document in the given order, each
        document's facts in the knowledge base's order."""
        by_doc = self.singles_by_document()
        return [q for d in doc_ids for q in by_doc.get(d, [])]

    def candidates(self, question: Question, k: int = 3, seed: int = 0, include: tuple[str, ...] = ()) -> tuple[list[str], int]:
        """The gold answer and up to `k` look-alikes: other values of the same attribute in this
        knowledge base (a price for a price, a person for a manager), none of which counts as right.
        Drawn per question from `seed`, in a shuffled order; returns (candidates, index of gold).
        An unanswerable question gets k + 1 values of its attribute and None: none of them is right
        (the model's preference for a refusal over them is a refusal score). `include`: values that
        must be among the look-alikes (a changed fact's value in the other version of the world)."""
        if question.kind == "structured":
            raise ValueError(f"question {question.qid!r} is structured: it has no single value to rank")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r} is not allowed: use an integer >= 1")
        right = {normalize(a) for a in question.answers}
        pool = sorted({q.answer for q in self.questions if q.kind in ("single", "multihop")
                       and _value_kind(q.attribute) == _value_kind(question.attribute)
                       and normalize(q.answer) not in right})
        if not pool:
            raise ValueError(f"question {question.qid!r}: no other value of its attribute to rank against")
        rng = random.Random(f"{seed}:{question.qid}")
        if question.kind == "unanswerable":
            return rng.sample(pool, min(k + 1, len(pool))), None
        others = rng.sample(pool, min(k, len(pool)))
        forced = [v for v in dict.fromkeys(include) if normalize(v) not in right]
        if len(forced) > k:
            raise ValueError(f"include={list(include)!r}: more values than the {k} look-alikes")
        if forced:  # the forced values take the places of the last drawn ones
            kept = [v for v in others if v not in forced][:k - len(forced)]
            others = rng.sample(kept + forced, len(kept) + len(forced))
        gold = rng.randrange(len(others) + 1)
        return others[:gold] + [question.answer] + others[gold:], gold

    def save(self, folder: str | Path) -> Path:
        """Write documents.jsonl and questions.jsonl (the format a reader can take elsewhere)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "documents.jsonl", "w") as f:
            for d in self.documents:
                f.write(json.dumps(asdict(d)) + "\n")
        with open(folder / "questions.jsonl", "w") as f:
            for q in self.questions:
                f.write(json.dumps(asdict(q)) + "\n")
        return folder


# ---------------------------------------------------------------------------------------------
# The world: entities and their facts (version-independent draw, then v2 edits)


@dataclass
class _Product:
    name: str
    series: str
    kind: str
    audience: str
    company: str
    price: int
    warranty_months: int
    launch: str  # "April 2021"
    designer: str
    site: str
    weight_kg: float | None
    code: str | None
    spare_price: int
    carton_kg: float
    new_in_v2: bool = False


@dataclass
class _Person:
    name: str
    role: str
    site: str
    joined: int
    extension: int
    company: str


@dataclass
class _Site:
    name: str
    manager: str
    opened: int
    headcount: int
    company: str


@dataclass
class _Policy:
    name: str
    company: str
    action: str
    window_days: int
    limit_usd: int
    effective: str  # "1 June 2024"
    owner: str


@dataclass
class _World:
    products: list[_Product]
    people: list[_Person]
    sites: list[_Site]
    policies: list[_Policy]
    ghosts: list[tuple[str, str]] = field(default_factory=list)  # (missing product, its series sibling)


def _money(v: int) -> str:
    return f"${v:,}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _draw_world(rng: random.Random, s: KBSizes) -> _World:
    series = rng.sample(_SERIES, s.n_series + s.v2_new_series)  # the last v2_new_series appear in v2
    site_names = rng.sample(_SITES, s.n_sites)
    full_names = [f"{a} {b}" for a in _FIRST for b in _LAST]
    names = rng.sample(full_names, s.n_people)
    people = [
        _Person(n, rng.choice(_ROLES), rng.choice(site_names), rng.randint(2004, 2023),
                rng.randint(2000, 8999), _COMPANIES[i % 2])
        for i, n in enumerate(names)
    ]
    sites = [
        _Site(n, rng.choice(names), rng.randint(1968, 2019), rng.randint(40, 1900), _COMPANIES[i % 2])
        for i, n in enumerate(site_names)
    ]
    used_codes: set[str] = set()
    products: list[_Product] = []
    for si, ser in enumerate(series):
        kind, audience = _KINDS[si % len(_KINDS)]
        letter = rng.choice("XSTRKM")
        base = rng.randint(1, 7) * (10 if rng.random() < 0.5 else 1)
        step = base // 10 * 5 if base >= 10 else 1
        for m in range(s.models_per_series):
            code = f"{ser[:2].upper()}-{rng.randint(1000, 9999)}"
            while code in used_codes:
                code = f"{ser[:2].upper()}-{rng.randint(1000, 9999)}"
            used_codes.add(code)
            products.append(_Product(
                name=f"{ser} {letter}{base + m * step}", series=ser, kind=kind, audience=audience,
                company=_COMPANIES[si % 2], price=rng.randint(120, 9800),
                warranty_months=rng.choice([6, 9, 12, 18, 24, 30, 36, 42, 48, 60]),
                launch=f"{rng.choice(_MONTHS)} {rng.randint(2011, 2024)}",
                designer=rng.choice(names), site=rng.choice(site_names),
                weight_kg=round(rng.uniform(0.2, 14.0), 1) if rng.random() < 0.75 else None,
                code=code if rng.random() < 0.75 else None,
                spare_price=rng.randint(15, 400), carton_kg=round(rng.uniform(0.5, 20.0), 1),
                new_in_v2=si >= s.n_series,
            ))
    # A product that does not exist, named like a real sibling: questions about it must be refused.
    ghosts = []
    for ser in rng.sample(series[: s.n_series], min(s.n_series, 6)):
        sibling = next(p for p in products if p.series == ser)
        stem = re.match(r"(.* [A-Z])(\d+)", sibling.name)
        ghosts.append((f"{stem.group(1)}{int(stem.group(2)) + 90}", sibling.name))
    topics = rng.sample(_POLICY_TOPICS, s.n_policies)
    policies = [
        _Policy(f"{_COMPANIES[i % 2].split()[0]} {t}", _COMPANIES[i % 2], action,
                rng.choice([14, 21, 30, 45, 60, 90, 120]), rng.randint(3, 90) * 50,
                f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(2019, 2025)}", rng.choice(names))
        for i, (t, action) in enumerate(topics)
    ]
    return _World(products, people, sites, policies, ghosts)


def _apply_v2(rng: random.Random, w: _World, share: float) -> _World:
    """Change `share` of the mutable facts (prices, terms, dates, who manages or owns what, where
    people work); launch dates, designers and founding years are history and stay."""
    sites = [s.name for s in w.sites]
    people = [x.name for x in w.people]
    draw = {
        "price": lambda: rng.randint(120, 9800),
        "warranty_months": lambda: rng.choice([6, 9, 12, 18, 24, 30, 36, 42, 48, 60]),
        "site": lambda: rng.choice(sites),
        "role": lambda: rng.choice(_ROLES),
        "extension": lambda: rng.randint(2000, 8999),
        "manager": lambda: rng.choice(people),
        "headcount": lambda: rng.randint(40, 1900),
        "window_days": lambda: rng.choice([14, 21, 30, 45, 60, 90, 120]),
        "limit_usd": lambda: rng.randint(3, 90) * 50,
        "effective": lambda: f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(2025, 2026)}",
        "owner": lambda: rng.choice(people),
    }
    mutable = [(p, a) for p in w.products if not p.new_in_v2 for a in ("price", "warranty_months", "site")]
    mutable += [(x, a) for x in w.people for a in ("role", "site", "extension")]
    mutable += [(x, a) for x in w.sites for a in ("manager", "headcount")]
    mutable += [(x, a) for x in w.policies for a in ("window_days", "limit_usd", "effective", "owner")]
    for i in sorted(rng.sample(range(len(mutable)), max(1, round(share * len(mutable))))):
        obj, attr = mutable[i]
        old = new = getattr(obj, attr)
        while new == old:
            new = draw[attr]()
        setattr(obj, attr, new)
    return w


# ---------------------------------------------------------------------------------------------
# Rendering documents and questions


def _product_doc(p: _Product, siblings: list[_Product], version: str) -> tuple[Document, dict[str, str]]:
    """Return the document and the gold sentence for each attribute it states."""
    other = next((s for s in siblings if s.name != p.name), None)
    gold = {
        "company": f"The {p.name} is a {p.kind} made by {p.company} for {p.audience}.",
        "designer": f"It was designed by {p.designer}.",
        "site": f"Every unit of the {p.name} is assembled at the {p.site} site.",
        "launch": f"The {p.name} was launched in {p.launch}.",
        "price": f"The {p.name} sells for {_money(p.price)} per unit.",
        "warranty": f"The {p.name} is covered by a warranty of {p.warranty_months} months.",
    }
    if p.weight_kg is not None:
        gold["weight"] = f"The {p.name} weighs {p.weight_kg} kg."
    if p.code is not None:
        gold["code"] = f"Its catalogue code is {p.code}."
    paras = [
        f"{gold['company']} {gold['designer']} {gold['site']}",
        f"{gold['launch']} "
        + (f"It sits beside the {other.name} in the {p.series} line, which is sold separately. " if other else "")
        + f"{gold['price']} A spare battery pack costs {_money(p.spare_price)}.",
        f"{gold['warranty']} Repairs after the warranty ends are quoted within 5 working days.",
    ]
    phys = []
    if "weight" in gold:
        phys.append(gold["weight"])
    phys.append(f"Its shipping carton weighs {p.carton_kg} kg.")
    if "code" in gold:
        phys.append(gold["code"])
    paras.append(" ".join(phys))
    doc = Document(f"product-{_slug(p.name)}", f"{p.name} {p.kind}", "\n\n".join(paras), "product", version, p.name)
    return doc, gold


def _person_doc(x: _Person, version: str) -> tuple[Document, dict[str, str]]:
    gold = {
        "role": f"{x.name} works as {x.role} at {x.company}.",
        "site": f"{x.name} is based at the {x.site} site.",
        "joined": f"{x.name} joined the company in {x.joined}.",
        "extension": f"{x.name} can be reached on phone extension {x.extension}.",
    }
    text = (f"{gold['role']} {gold['site']}\n\n{gold['joined']} Before that, {x.name.split()[0]} spent "
            f"several years in consulting.\n\n{gold['extension']} The front desk is on extension 1000.")
    return Document(f"person-{_slug(x.name)}", x.name, text, "person", version, x.name), gold


def _site_doc(x: _Site, version: str) -> tuple[Document, dict[str, str]]:
    gold = {
        "manager": f"The {x.name} site is managed by {x.manager}.",
        "opened": f"The {x.name} site opened in {x.opened}.",
        "headcount": f"The {x.name} site employs {x.headcount} people.",
    }
    text = (f"{gold['manager']} It belongs to {x.company}.\n\n{gold['opened']} It was extended ten years "
            f"later.\n\n{gold['headcount']} About a third of them work in shifts.")
    return Document(f"site-{_slug(x.name)}", f"{x.name} site", text, "site", version, x.name), gold


def _policy_doc(x: _Policy, version: str) -> tuple[Document, dict[str, str]]:
    gold = {
        "window": f"Under the {x.name}, a claim must be made within {x.window_days} days.",
        "limit": f"The {x.name} caps the amount at {_money(x.limit_usd)} per claim.",
        "effective": f"The {x.name} took effect on {x.effective}.",
        "owner": f"The {x.name} is owned by {x.owner}.",
    }
    text = (f"{gold['effective']} It sets out what may be {x.action} at {x.company}. {gold['owner']}\n\n"
            f"{gold['window']} Late claims are reviewed by the finance team within 10 days.\n\n"
            f"{gold['limit']} Larger amounts need a second approval.")
    return Document(f"policy-{_slug(x.name)}", x.name, text, "policy", version, x.name), gold


# Paraphrase templates: (attribute -> list of question templates); answers are short spans.
_Q_PRODUCT = {
    "price": ["What is the price of the {name}?", "How much does the {name} cost?",
              "What does one {name} unit sell for?", "At what price is the {name} sold?"],
    "warranty": ["How long is the warranty on the {name}?", "What warranty period does the {name} have?",
                 "For how many months is the {name} under warranty?", "What is the {name}'s warranty length?"],
    "launch": ["When was the {name} launched?", "In which month and year did the {name} come out?",
               "What was the launch date of the {name}?", "When did the {name} first go on sale?"],
    "designer": ["Who designed the {name}?", "Who is the designer of the {name}?",
                 "Which person designed the {name}?", "Name the designer of the {name}."],
    "site": ["At which site is the {name} assembled?", "Where is the {name} assembled?",
             "Which site assembles the {name}?", "Where are units of the {name} put together?"],
    "weight": ["How much does the {name} weigh?", "What is the weight of the {name}?",
               "How heavy is the {name}?", "What does the {name} weigh?"],
    "code": ["What is the catalogue code of the {name}?", "Which catalogue code does the {name} have?",
             "What code is the {name} listed under in the catalogue?", "Give the catalogue code of the {name}."],
}
_Q_PERSON = {
    "role": ["What is {name}'s job?", "What role does {name} have?",
             "What does {name} work as?", "What is the job title of {name}?"],
    "site": ["At which site is {name} based?", "Where is {name} based?",
             "Which site does {name} work from?", "What site is {name} located at?"],
    "joined": ["In which year did {name} join the company?", "When did {name} join?",
               "What year did {name} start at the company?", "Since which year has {name} been with the company?"],
    "extension": ["What is {name}'s phone extension?", "On which extension can {name} be reached?",
                  "Which phone extension does {name} have?", "How do I reach {name} by phone extension?"],
}
_Q_SITE = {
    "manager": ["Who manages the {name} site?", "Who is the manager of the {name} site?",
                "Which person runs the {name} site?", "Who is in charge of the {name} site?"],
    "opened": ["When did the {name} site open?", "In which year did the {name} site open?",
               "What year was the {name} site opened?", "Since when has the {name} site been open?"],
    "headcount": ["How many people does the {name} site employ?", "What is the headcount of the {name} site?",
                  "How many employees work at the {name} site?", "How large is the staff of the {name} site?"],
}
_Q_POLICY = {
    "window": ["Within how many days must a claim be made under the {name}?",
               "What is the claim window of the {name}?",
               "How many days does the {name} allow for a claim?",
               "By how many days must claims under the {name} be made?"],
    "limit": ["What is the per-claim cap of the {name}?", "How much can be claimed at most under the {name}?",
              "What amount does the {name} cap each claim at?", "What is the maximum claim under the {name}?"],
    "effective": ["When did the {name} take effect?", "On which date did the {name} come into force?",
                  "What is the effective date of the {name}?", "From which date does the {name} apply?"],
    "owner": ["Who owns the {name}?", "Who is the owner of the {name}?",
              "Which person owns the {name}?", "Who is responsible for the {name}?"],
}
_Q_MULTIHOP = {
    "designer_site": ["At which site is the designer of the {name} based?",
                      "Where is the person who designed the {name} based?",
                      "Which site does the designer of the {name} work from?",
                      "The {name}'s designer is based at which site?"],
    "site_manager": ["Who manages the site where the {name} is assembled?",
                     "Who is the manager of the site that assembles the {name}?",
                     "Which person runs the site where units of the {name} are put together?",
                     "The {name} is assembled at a site managed by whom?"],
}
_Q_STRUCTURED = [
    "Give the name, price in US dollars and warranty in months of the {name} as JSON.",
    "Return a JSON object with the name, price_usd and warranty_months of the {name}.",
    "As JSON, what are the name, price (USD) and warranty length (months) of the {name}?",
    "Answer in JSON: name, price_usd and warranty_months for the {name}.",
]
STRUCTURED_FIELDS = {"name": str, "price_usd": int, "warranty_months": int}


_VALUE_KINDS = {"designer": "person", "manager": "person", "owner": "person", "site_manager": "person",
                "designer_site": "site", "site": "site"}


def _value_kind(attribute: str) -> str:
    """Attributes whose values are the same kind of thing (a manager and a designer are people)."""
    return _VALUE_KINDS.get(attribute, attribute)


def _aliases(attribute: str, value) -> tuple[str, ...]:
    """Other spellings that count as the gold answer (short spans only, never looser matches)."""
    if attribute in ("price", "limit"):
        return (f"{value:,}", str(value), f"${value}")
    if attribute == "warranty":
        return (f"{value}-month", f"{value} mo")
    if attribute == "window":
        return (f"{value}-day",)
    if attribute == "weight":
        return (f"{value}kg", f"{value} kilograms")
    if attribute == "headcount":
        return (f"{value:,}",) if value >= 1000 else ()
    return ()


def _answer_text(attribute: str, value) -> str:
    return {
        "price": lambda v: _money(v), "limit": lambda v: _money(v),
        "warranty": lambda v: f"{v} months", "window": lambda v: f"{v} days",
        "weight": lambda v: f"{v} kg", "headcount": lambda v: str(v),
    }.get(attribute, lambda v: str(v))(value)


def build_kb(seed: int = 0, sizes: KBSizes | None = None, version: str = "v1") -> KnowledgeBase:
    """Generate the knowledge base for `version` ("v1" or "v2") deterministically from `seed`.

    In both versions a question's `changed_in_v2` says whether its gold answer differs between them.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed: use an integer >= 0")
    if sizes is not None and not isinstance(sizes, KBSizes):
        raise TypeError(f"sizes={sizes!r} is not allowed: use a KBSizes(...) or None for the defaults")
    if version not in ("v1", "v2"):
        raise ValueError(f"version={version!r} is not allowed: use 'v1' or 'v2'")
    sizes = sizes or KBSizes()
    kb = _render(seed, sizes, version)
    other = {q.qid: q.answer for q in _render(seed, sizes, "v2" if version == "v1" else "v1").questions}
    kb.questions = [replace(q, changed_in_v2=q.qid in other and other[q.qid] != q.answer) for q in kb.questions]
    return kb


def _render(seed: int, sizes: KBSizes, version: str) -> KnowledgeBase:
    world = _draw_world(random.Random(seed), sizes)
    if version == "v2":
        world = _apply_v2(random.Random(seed * 7919 + 2), world, sizes.v2_change_share)
    products = [p for p in world.products if version == "v2" or not p.new_in_v2]

    documents: list[Document] = []
    questions: list[Question] = []
    qrng = random.Random(seed + 1)  # test paraphrase draws, independent of the world draw
    by_series: dict[str, list[_Product]] = {}
    for p in products:
        by_series.setdefault(p.series, []).append(p)
    site_doc = {s.name: f"site-{_slug(s.name)}" for s in world.sites}
    person_doc = {x.name: f"person-{_slug(x.name)}" for x in world.people}
    person = {x.name: x for x in world.people}
    site = {s.name: s for s in world.sites}

    def add(kind, attribute, entity, templates, answer, aliases, doc_ids, gold_sentences, fields=None, related=()):
        texts = tuple(t.format(name=entity) for t in templates[: sizes.n_paraphrases])
        questions.append(Question(
            qid=f"{kind}:{attribute}:{_slug(entity)}", kind=kind, attribute=attribute, paraphrases=texts,
            test_index=qrng.randrange(len(texts)), answer=answer, aliases=aliases, doc_ids=doc_ids,
            gold_sentences=gold_sentences, entity=entity, fields=fields, related_doc_ids=related,
        ))

    def add_entity(doc, gold, templates, values):
        documents.append(doc)
        for attr, tmpl in templates.items():
            if attr in gold:
                add("single", attr, doc.entity, tmpl, _answer_text(attr, values[attr]),
                    _aliases(attr, values[attr]), (doc.doc_id,), (gold[attr],))

    for p in products:
        doc, gold = _product_doc(p, by_series[p.series], version)
        add_entity(doc, gold, _Q_PRODUCT, {"price": p.price, "warranty": p.warranty_months, "launch": p.launch,
                                           "designer": p.designer, "site": p.site, "weight": p.weight_kg,
                                           "code": p.code})
        for attr, tmpl in _UNDOCUMENTED.items():
            if attr not in gold:
                add("unanswerable", attr, p.name, _Q_PRODUCT[attr], REFUSAL_ANSWER, (), (), (),
                    related=(doc.doc_id,))
        d = person[p.designer]
        add("multihop", "designer_site", p.name, _Q_MULTIHOP["designer_site"], d.site, (),
            (doc.doc_id, person_doc[d.name]), (gold["designer"], _person_doc(d, version)[1]["site"]))
        s = site[p.site]
        add("multihop", "site_manager", p.name, _Q_MULTIHOP["site_manager"], s.manager, (),
            (doc.doc_id, site_doc[s.name]), (gold["site"], _site_doc(s, version)[1]["manager"]))
        fields = {"name": p.name, "price_usd": p.price, "warranty_months": p.warranty_months}
        add("structured", "json", p.name, _Q_STRUCTURED, json.dumps(fields), (), (doc.doc_id,),
            (gold["price"], gold["warranty"]), fields=fields)
    for x in world.people:
        doc, gold = _person_doc(x, version)
        add_entity(doc, gold, _Q_PERSON, {"role": x.role, "site": x.site, "joined": x.joined, "extension": x.extension})
    for x in world.sites:
        doc, gold = _site_doc(x, version)
        add_entity(doc, gold, _Q_SITE, {"manager": x.manager, "opened": x.opened, "headcount": x.headcount})
    for x in world.policies:
        doc, gold = _policy_doc(x, version)
        add_entity(doc, gold, _Q_POLICY, {"window": x.window_days, "limit": x.limit_usd,
                                          "effective": x.effective, "owner": x.owner})
    for ghost, sibling in world.ghosts:
        for attr in ("price", "warranty"):
            add("unanswerable", attr, ghost, _Q_PRODUCT[attr], REFUSAL_ANSWER, (), (), (),
                related=(f"product-{_slug(sibling)}",))
    return KnowledgeBase(version, seed, documents, questions)
