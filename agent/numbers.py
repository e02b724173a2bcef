"""Numbers, amounts, dates, percentages and durations in English and Chinese text.

The grounding check compares the quantities an answer states with those its passages state,
so "ten days", "10 days" and "十天" must read the same, and "16 weeks" must not pass for
"16 days". :func:`quantities` finds each quantity as a value and, when one follows it, a unit:

- digits: ``10``, ``1,000``, ``0.30``, ``3rd``, ``5萬`` (50000), clock times ``09:30`` / ``9 am``;
- English words: ``ten``, ``twenty-five``, ``one hundred and twenty``, ordinals ``third``;
- Chinese numerals: ``八``, ``十四``, ``一百二十``, ``兩萬五千``, ``二〇二四``, ordinals ``第三``;
- percentages: ``10%``, ``10 percent``, ``百分之十``.

Text is NFKC-folded first (full-width digits and ``％`` become ASCII), so spans index the
folded text: use :func:`fold` on the text you pass and slice.

Words that are numbers only sometimes are counted only where they clearly are: ``one``, the
English ordinals and a lone Chinese numeral (``一般``, ``統一``) only right before a unit or a
counter (``one hour``, ``third day``, ``一次``, ``三個月``), and a Chinese numeral never starts
with 百/千/萬 (``千萬`` is "by all means", ``萬一`` "in case").
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Quantity", "fold", "quantities", "without_quantities"]


@dataclass(frozen=True)
class Quantity:
    """A value, its unit ("day", "week", "month", "year", "hour", "minute", "clock",
    "percent", "eur", "usd", "yuan", "times") or None, and its span in the folded text."""

    value: float
    unit: str | None
    start: int
    end: int

    def matches(self, other: Quantity) -> bool:
        """Same value, and the same unit when both have one (a bare number fits any unit)."""
        if self.unit and other.unit and self.unit != other.unit:
            return False
        if "clock" in (self.unit, other.unit):  # "6 pm", "18:00" and 下午六點 are one time
            return math.isclose(self.value % 12, other.value % 12, abs_tol=1e-6)
        return math.isclose(self.value, other.value, rel_tol=1e-9, abs_tol=1e-9)

    def __str__(self) -> str:
        shown = (
            f"{self.value:g}"
            if self.unit != "clock"
            else f"{int(self.value)}:{round(self.value % 1 * 60):02d}"
        )
        return shown if self.unit in (None, "clock") else f"{shown} {self.unit}"


_SMALL = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_ORDINAL = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
_SCALE = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_CJK_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "兩": 2, "两": 2, "三": 3, "四": 4, "五": 5,
              "六": 6, "七": 7, "八": 8, "九": 9}  # fmt: skip
_CJK_SMALL = {"十": 10, "百": 100, "千": 1000}
_CJK_BIG = {"萬": 10_000, "万": 10_000, "億": 100_000_000, "亿": 100_000_000}
_CJK_NUM = "零〇一二兩两三四五六七八九十百千萬万億亿"

_WORD = "|".join(sorted([*_SMALL, *_ORDINAL, *_SCALE], key=len, reverse=True))
_NUMBER = re.compile(
    r"(?P<clock>(?<![\d.:])(?P<h>\d{1,2}):(?P<m>[0-5]\d)(?![\d:])(?:\s*(?P<ampm>[ap])\.?m\b\.?)?)"
    r"|(?P<pct_cjk>百分之(?P<pct_run>[" + _CJK_NUM + r"]+|\d+(?:\.\d+)?))"
    r"|(?P<digits>(?P<prefix>nt\$|us\$|€|\$|eur\s|usd\s)?(?<![A-Za-z0-9.,])"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d])"
    r"(?:(?P<ordsfx>st|nd|rd|th)\b|(?P<mult>[十百千萬万億亿])|\s*(?P<hour_ampm>[ap])\.?m\b\.?)?)"
    r"|(?P<ordinal_cjk>第(?P<ord_run>[" + _CJK_NUM + r"]+))"
    r"|(?P<cjk>[" + _CJK_NUM + r"]+)"
    r"|(?P<words>\b(?:" + _WORD + r")(?:(?:\s+|-)(?:and\s+)?(?:" + _WORD + r"))*\b)",
    re.IGNORECASE,
)
# Adjectives allowed between a number and its unit: "20 working days", "third consecutive day".
_ADJ = r"(?:(?:working|business|calendar|consecutive|full|paid|extra|additional)[\s-]+)?"
_UNITS: list[tuple[str, str, str]] = [  # (unit, English after a space or hyphen, Chinese)
    ("day", _ADJ + r"days?\b", r"(?:個|个)?(?:工作)?(?:天|日)"),
    ("week", _ADJ + r"weeks?\b", r"(?:個|个)?(?:星期|週|周|禮拜|礼拜)"),
    ("month", _ADJ + r"months?\b", r"(?:個|个)?月"),
    ("year", _ADJ + r"years?\b", r"年"),
    ("hour", _ADJ + r"(?:hours?|hrs?)\b", r"(?:個|个)?(?:小時|小时|鐘頭|钟头)"),
    ("minute", r"(?:minutes?|mins?)\b", r"分鐘|分钟"),
    ("clock", r"o'clock\b", r"(?:點|点)半?"),
    ("percent", r"(?:%|percent\b|per\s+cent\b)", r"%"),
    ("eur", r"(?:eur\b|euros?\b|€)", r"歐元|欧元"),
    ("usd", r"(?:usd\b|dollars?\b|us\$)", r"美元|美金"),
    ("yuan", r"(?:ntd\b|twd\b|rmb\b|yuan\b)", r"元|塊|块"),
    ("times", r"times\b", r"倍"),
]
_UNIT = re.compile(
    "|".join(rf"(?P<{name}>[\s-]*(?:{en})|\s?(?:{zh}))" for name, en, zh in _UNITS), re.IGNORECASE
)
# What may follow a lone Chinese numeral for it to be a count (besides a unit): 一次, 三位.
_COUNTER = re.compile(r"[個个次人位名張张件項项歲岁家台份條条頁页間间輛辆]")
_PREFIX_UNIT = {"nt$": "yuan", "us$": "usd", "$": "usd", "€": "eur", "eur": "eur", "usd": "usd"}
_NOT_NUMBERS = {"萬一", "万一", "一一", "千萬", "千万", "萬萬", "万万"}


def fold(text: str) -> str:
    """The form :func:`quantities` reads: NFKC (full-width digits, ％ and spaces to ASCII)."""
    return unicodedata.normalize("NFKC", text)


def quantities(text: str) -> list[Quantity]:
    """Every quantity in ``text`` (folded first), in order."""
    text = fold(text)
    found: list[Quantity] = []
    for match in _NUMBER.finditer(text):
        parsed = _parse(match)
        if parsed is None:
            continue
        value, unit, needs_unit = parsed
        end = match.end()
        tail = _UNIT.match(text, end)
        if tail and tail.end() > end:
            unit = unit or tail.lastgroup
            end = tail.end()
        elif needs_unit and not _COUNTER.match(text, end):
            continue
        found.append(Quantity(value, unit, match.start(), end))
    return found


def without_quantities(text: str) -> str:
    """The folded text with every quantity (and its unit) replaced by a space."""
    text = fold(text)
    for q in reversed(quantities(text)):
        text = f"{text[: q.start]} {text[q.end :]}"
    return text


_Parsed = tuple[float, str | None, bool] | None  # value, unit, whether it counts only before a unit


def _parse(match: re.Match[str]) -> _Parsed:
    g = match.groupdict()
    kind = next(k for k in ("clock", "pct_cjk", "digits", "ordinal_cjk", "cjk", "words") if g[k])
    return _PARSERS[kind](g)


def _clock(g: dict[str, str]) -> _Parsed:
    hours = int(g["h"]) + (12 if (g["ampm"] or "").lower() == "p" and int(g["h"]) < 12 else 0)
    return hours + int(g["m"]) / 60, "clock", False


def _percent(g: dict[str, str]) -> _Parsed:
    run = g["pct_run"]
    return float(run) if run[0].isdigit() else _cjk_value(run), "percent", False


def _digits(g: dict[str, str]) -> _Parsed:
    value = float(g["num"].replace(",", ""))
    if g["mult"]:
        value *= {**_CJK_SMALL, **_CJK_BIG}[g["mult"]]
    if g["hour_ampm"]:
        pm = g["hour_ampm"].lower() == "p" and value < 12
        return value + (12 if pm else 0), "clock", False
    return value, _PREFIX_UNIT.get((g["prefix"] or "").strip().lower()), False


def _ordinal(g: dict[str, str]) -> _Parsed:
    return _cjk_value(g["ord_run"]), None, False


def _cjk(g: dict[str, str]) -> _Parsed:
    run = g["cjk"]
    if run in _NOT_NUMBERS or (run[0] not in _CJK_DIGIT and run[0] != "十"):
        return None
    # A lone numeral is a word part (一般, 統一, 十分) unless a unit or counter follows.
    return _cjk_value(run), None, len(run) == 1


def _cjk_value(run: str) -> float:
    if len(run) > 1 and all(c in _CJK_DIGIT for c in run):
        return float("".join(str(_CJK_DIGIT[c]) for c in run))  # 二〇二四 is read digit by digit
    total = section = digit = 0
    for c in run:
        if c in _CJK_DIGIT:
            digit = _CJK_DIGIT[c]
        elif c in _CJK_SMALL:
            section += (digit or 1) * _CJK_SMALL[c]
            digit = 0
        elif _CJK_BIG[c] == 100_000_000:
            total = (total + section + digit) * _CJK_BIG[c]
            section = digit = 0
        else:
            total += (section + digit or 1) * _CJK_BIG[c]
            section = digit = 0
    return float(total + section + digit)


def _words(g: dict[str, str]) -> _Parsed:
    words = [w for w in re.split(r"[\s-]+", g["words"].lower()) if w != "and"]
    total = current = 0
    for word in words:
        if word in _SCALE:
            if _SCALE[word] == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * _SCALE[word]
                current = 0
        else:
            current += _SMALL.get(word, _ORDINAL.get(word, 0))
    # "one" and the ordinals are numbers only before a unit: "one hour", "the third day",
    # but not "one of", "first, submit" or "a second approval".
    vague = len(words) == 1 and (words[0] == "one" or words[0] in _ORDINAL)
    return float(total + current), None, vague


_PARSERS: dict[str, Callable[[dict[str, str]], _Parsed]] = {
    "clock": _clock,
    "pct_cjk": _percent,
    "digits": _digits,
    "ordinal_cjk": _ordinal,
    "cjk": _cjk,
    "words": _words,
}
