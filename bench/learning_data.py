"""A generated company handbook for bench/learning.py, in English and Traditional Chinese.

Many short policy documents, each stating three facts with numbers, so every fact sits beside
two distracting numbers of the same kind. Every fact has three wordings of its question. The
documents are split (by a seeded shuffle) into those employees ask about and held-out ones
nobody asks about: the held-out questions measure whether what the model learned carries over.
Values are drawn per seed, so no fact is in the base model's weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (thing, unit, period) in English and Chinese; one per fact.
THINGS_EN = [
    ("meal", "dollars", "day"), ("phone", "dollars", "month"), ("training", "hours", "year"),
    ("gym", "dollars", "month"), ("home office", "dollars", "year"), ("book", "dollars", "year"),
    ("internet", "dollars", "month"), ("commuting", "dollars", "month"), ("conference", "days", "year"),
    ("volunteering", "days", "year"), ("wellness", "dollars", "quarter"), ("childcare", "dollars", "month"),
    ("language course", "hours", "year"), ("hotel", "dollars", "night"), ("taxi", "dollars", "trip"),
    ("parking", "dollars", "month"), ("eyeglasses", "dollars", "year"), ("dental", "dollars", "year"),
    ("relocation", "days", "move"), ("mentoring", "hours", "month"), ("remote work", "days", "week"),
    ("study leave", "days", "year"), ("bicycle", "dollars", "year"), ("team lunch", "dollars", "quarter"),
    ("software", "dollars", "year"), ("coworking", "days", "month"), ("laptop bag", "dollars", "year"),
    ("mobile data", "dollars", "month"), ("visa", "days", "trip"), ("first aid course", "hours", "year"),
    ("headset", "dollars", "year"), ("moving", "dollars", "move"), ("uniform", "dollars", "year"),
    ("flight", "hours", "trip"), ("sabbatical", "weeks", "year"), ("snack", "dollars", "week"),
]  # fmt: skip
THINGS_ZH = [
    ("餐費", "元", "天"), ("電話費", "元", "月"), ("培訓", "小時", "年"), ("健身房", "元", "月"),
    ("居家辦公", "元", "年"), ("購書", "元", "年"), ("網路費", "元", "月"), ("通勤", "元", "月"),
    ("研討會", "天", "年"), ("志工假", "天", "年"), ("健康促進", "元", "季"), ("托育", "元", "月"),
    ("語言課程", "小時", "年"), ("住宿", "元", "晚"), ("計程車", "元", "趟"), ("停車", "元", "月"),
    ("眼鏡", "元", "年"), ("牙科", "元", "年"),
]  # fmt: skip
AREAS_EN = [
    "Travel", "Benefits", "Learning", "Workplace", "Health", "Equipment", "Family", "Leave", "Commuting",
    "Wellbeing", "Expenses", "Mobility",
]  # fmt: skip
AREAS_ZH = ["差旅", "福利", "學習", "職場", "健康", "設備"]


@dataclass(frozen=True)
class Fact:
    doc: str  # document title
    language: str  # en | zh
    sentence: str  # as the document states it
    fact: str  # what a right answer must state ("45 dollars", "45元")
    wrong: str  # a wrong value of the same kind, for poisoned feedback
    questions: tuple[str, str, str]  # three wordings


@dataclass(frozen=True)
class Document:
    title: str
    language: str
    text: str
    facts: tuple[Fact, ...]


def _en(area: str, things: list[tuple[str, str, str]], values: list[int], rng: random.Random) -> Document:
    title = f"{area} policy"
    facts = []
    for (thing, unit, period), n in zip(things, values, strict=True):
        frame = rng.randrange(3)
        if frame == 0:
            sentence = f"Employees receive a {thing} allowance of {n} {unit} per {period}."
            questions = (
                f"How much is the {thing} allowance?",
                f"What {thing} allowance do employees get per {period}?",
                f"How many {unit} do I get for {thing}?",
            )
        elif frame == 1:
            sentence = f"The maximum for {thing} is {n} {unit} per {period}."
            questions = (
                f"What is the maximum for {thing}?",
                f"How many {unit} is {thing} capped at per {period}?",
                f"Is there a limit on {thing}?",
            )
        else:
            sentence = f"The company covers up to {n} {unit} of {thing} each {period}."
            questions = (
                f"How much {thing} does the company cover?",
                f"Up to how many {unit} of {thing} are covered each {period}?",
                f"What does the company pay for {thing}?",
            )
        wrong = n + rng.choice([-1, 1]) * rng.randint(2, 9)
        facts.append(Fact(title, "en", sentence, f"{n} {unit}", f"{wrong} {unit}", questions))
    intro = f"This policy sets the {area.lower()} rules for all employees."
    text = f"# {title}\n\n{intro} " + " ".join(f.sentence for f in facts) + "\n"
    return Document(title, "en", text, tuple(facts))


def _zh(area: str, things: list[tuple[str, str, str]], values: list[int], rng: random.Random) -> Document:
    title = f"{area}規定"
    facts = []
    for (thing, unit, period), n in zip(things, values, strict=True):
        frame = rng.randrange(2)
        if frame == 0:
            sentence = f"員工的{thing}補助為每{period}{n}{unit}。"
            questions = (
                f"{thing}補助是多少？",
                f"每{period}的{thing}補助有多少{unit}？",
                f"請問{thing}可以補助多少？",
            )
        else:
            sentence = f"{thing}的上限為每{period}{n}{unit}。"
            questions = (
                f"{thing}的上限是多少？",
                f"{thing}每{period}最多多少{unit}？",
                f"請問{thing}有上限嗎？",
            )
        wrong = n + rng.choice([-1, 1]) * rng.randint(2, 9)
        facts.append(Fact(title, "zh", sentence, f"{n}{unit}", f"{wrong}{unit}", questions))
    text = f"# {title}\n\n本規定適用於全體員工。" + "".join(f.sentence for f in facts) + "\n"
    return Document(title, "zh", text, tuple(facts))


def handbook(seed: int = 0, *, en_docs: int = 12, zh_docs: int = 6) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for kind, areas, things, count, make in (
        ("en", AREAS_EN, THINGS_EN, en_docs, _en),
        ("zh", AREAS_ZH, THINGS_ZH, zh_docs, _zh),
    ):
        if count > len(areas) or 3 * count > len(things):
            raise ValueError(f"at most {min(len(areas), len(things) // 3)} {kind} documents")
        pool = list(things)
        rng.shuffle(pool)
        for i in range(count):
            values = rng.sample(range(12, 95), 3)  # three distinct numbers per document
            docs.append(make(areas[i], pool[3 * i : 3 * i + 3], values, rng))
    return docs


def split(docs: list[Document], held_out: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """(asked, held out), per language, so both languages have both."""
    rng = random.Random(seed + 1)
    asked, held = [], []
    for language in ("en", "zh"):
        mine = [d for d in docs if d.language == language]
        rng.shuffle(mine)
        cut = max(1, round(held_out * len(mine)))
        held += mine[:cut]
        asked += mine[cut:]
    return asked, held
