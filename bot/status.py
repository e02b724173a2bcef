"""What kbot says it is doing while it works on an answer, in the asker's language.

Each platform shows these lines its own way: Slack rotates them as the thread's loading
messages, Teams shows the first as an informative stream update, the web chat as its status line.
"""

from __future__ import annotations

from agent.answering import Progress
from agent.grounding import language

_SEARCHING = {"en": "Searching {where}…", "zh": "正在搜尋 {where}…"}
_READING = {"en": "Reading {n} sources…", "zh": "正在閱讀 {n} 份資料…"}
_READING_ONE = {"en": "Reading 1 source…", "zh": "正在閱讀 1 份資料…"}
_WRITING = {"en": "Writing the answer…", "zh": "正在撰寫答案…"}
_CHECKING = {"en": "Checking it against the sources…", "zh": "正在核對資料來源…"}
_EVERYTHING = {"en": "the documents", "zh": "文件"}
STARTING = {"en": "Looking into it…", "zh": "正在處理…"}


def _lang(question: str) -> str:
    # Simplified Chinese readers read these Traditional lines without trouble; a third table
    # would be three more strings to keep in step.
    return "zh" if language(question).startswith("zh") else "en"


def starting(question: str) -> str:
    return STARTING[_lang(question)]


def lines(progress: Progress, question: str, collections: list[str]) -> list[str]:
    """The status lines for ``progress``: the first is what is happening now."""
    lang = _lang(question)
    if progress.stage == "searching":
        where = " / ".join(collections[:3]) if 0 < len(collections) <= 3 else _EVERYTHING[lang]
        return [_SEARCHING[lang].format(where=where)]
    reading = _READING_ONE if progress.sources == 1 else _READING
    return [reading[lang].format(n=progress.sources), _WRITING[lang], _CHECKING[lang]]
