"""Sparse (BM25-style) vectors whose tokens work for English and for CJK text.

Chinese and Japanese are written without spaces, so a word tokenizer sees a whole sentence as
one token and keyword search finds nothing. Like Lucene's CJK analyzer we index overlapping
character bigrams of every CJK run (請假規定 → 請假 假規 規定), which matches a Chinese question
against a Chinese passage without a dictionary. Latin, Cyrillic and other scripts are split into
words. Tokens are hashed to 32-bit indices, the same for every vector store.

Documents carry the BM25 term-frequency part; the IDF part is applied by Qdrant itself
(``Modifier.IDF`` on the sparse vector), so it stays right as documents come and go.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

# BM25 constants; part of the index format (changing them re-indexes, see ingest_key()).
K1 = 1.2
B = 0.75
AVG_LEN = 120.0

_CJK = (
    r"\u3040-\u30ff"  # Hiragana, Katakana
    r"\u3400-\u4dbf"  # CJK Extension A
    r"\u4e00-\u9fff"  # CJK Unified Ideographs
    r"\uac00-\ud7af"  # Hangul syllables
    r"\uf900-\ufaff"  # CJK Compatibility Ideographs
    r"\U00020000-\U0002ebef"  # Extensions B–F
)
_TOKEN = re.compile(rf"([{_CJK}]+)|([^\W_{_CJK}]+)")
# fmt: off
_STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "how",
    "i", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were",
    "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
])
# fmt: on


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def tokenize(text: str) -> list[str]:
    """Words for alphabetic scripts, character bigrams for CJK runs; lower-cased, NFKC-folded."""
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for cjk, word in _TOKEN.findall(text):
        if cjk:
            if len(cjk) == 1:
                tokens.append(cjk)
            else:
                tokens.extend(cjk[i : i + 2] for i in range(len(cjk) - 1))
        elif word not in _STOPWORDS:
            tokens.append(word)
    return tokens


def token_index(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "little")


def document_vector(text: str) -> SparseVector:
    """BM25 term-frequency weights of a chunk (the IDF factor is Qdrant's)."""
    counts = Counter(tokenize(text))
    length_norm = K1 * (1 - B + B * sum(counts.values()) / AVG_LEN)
    weights: dict[int, float] = {}
    for token, tf in counts.items():
        # Two tokens hashing to one index add up rather than overwrite.
        idx = token_index(token)
        weights[idx] = weights.get(idx, 0.0) + tf * (K1 + 1) / (tf + length_norm)
    return _sorted(weights)


def query_vector(text: str) -> SparseVector:
    """Each distinct query token weighs 1; Qdrant multiplies in the IDF."""
    return _sorted({token_index(t): 1.0 for t in set(tokenize(text))})


def _sorted(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[weights[i] for i in indices])


# Function characters of Chinese that say nothing about a topic.
_CJK_STOP = frozenset(
    "的了是在有和與及或嗎呢吧啊可以能會要請問幾多少什麼怎樣如何哪誰為嗎之也就都而我你他她它們這那"
)


def keywords(text: str) -> set[str]:
    """Content words, and content characters of CJK runs, for judging whether text is on topic.

    Character-level for CJK because a question and its passage rarely share whole bigrams
    (婚假可以請幾天 vs 員工結婚可請婚假八天) but do share their content characters.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    found: set[str] = set()
    for cjk, word in _TOKEN.findall(text):
        if cjk:
            found.update(ch for ch in cjk if ch not in _CJK_STOP)
        elif word not in _STOPWORDS:
            found.add(word)
    return found
