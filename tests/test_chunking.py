import itertools

import pytest

from knowledge.chunking import Chunker
from knowledge.document import LoadedDocument, Section
from knowledge.embeddings import SentenceTransformerEmbedder


@pytest.fixture(scope="module")
def tokenizer(embedder: SentenceTransformerEmbedder):  # type: ignore[no-untyped-def]
    return embedder.tokenizer()


def count(tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_chunks_respect_the_token_budget_including_heading_prefix(tokenizer) -> None:  # type: ignore[no-untyped-def]
    body = "\n\n".join(
        f"Paragraph {i} explains rule number {i} of the travel policy in detail." for i in range(40)
    )
    doc = LoadedDocument("Handbook", [Section(("Travel", "Rules"), body)])
    drafts = Chunker(tokenizer, 64, 8).chunk(doc)
    assert len(drafts) > 5
    for d in drafts:
        assert count(tokenizer, d.embed_text) <= 64 + 2  # joins may differ by a token
        assert d.embed_text.startswith("Handbook > Travel > Rules\n")
        assert d.heading_path == ("Travel", "Rules")
    assert [d.ordinal for d in drafts] == list(range(len(drafts)))


def test_paragraphs_are_not_split_when_they_fit(tokenizer) -> None:  # type: ignore[no-untyped-def]
    paragraphs = [f"Short paragraph number {i}." for i in range(6)]
    drafts = Chunker(tokenizer, 200, 0).chunk(LoadedDocument("T", [Section((), "\n\n".join(paragraphs))]))
    assert len(drafts) == 1
    assert drafts[0].text.split("\n\n") == paragraphs


def test_chunks_never_cross_sections(tokenizer) -> None:  # type: ignore[no-untyped-def]
    doc = LoadedDocument("T", [Section(("A",), "alpha text"), Section(("B",), "beta text")])
    drafts = Chunker(tokenizer, 200, 0).chunk(doc)
    assert [(d.heading_path, d.text) for d in drafts] == [(("A",), "alpha text"), (("B",), "beta text")]


def test_cjk_text_is_split_at_sentence_ends_and_kept_intact(tokenizer) -> None:  # type: ignore[no-untyped-def]
    sentences = [
        "特休假須於三天前提出申請。",
        "連續請病假超過三天者須附醫師診斷證明。",
        "婚假八天須於三個月內請畢。",
    ] * 4
    text = "".join(sentences)
    drafts = Chunker(tokenizer, 48, 0).chunk(LoadedDocument("", [Section(("請假",), text)]))
    assert len(drafts) > 1
    for d in drafts:
        assert " " not in d.text  # no spaces inserted between CJK characters
        assert d.text.endswith("。")  # cut at a sentence end
    assert "".join(d.text for d in drafts) == text


def test_overlap_repeats_trailing_sentences(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = " ".join(f"Sentence {i} is about leave." for i in range(30))
    drafts = Chunker(tokenizer, 40, 12).chunk(LoadedDocument("", [Section((), text)]))
    assert len(drafts) > 2
    for a, b in itertools.pairwise(drafts):
        a_sentences = [x.strip(". ") for x in a.text.split(". ")]
        b_sentences = [x.strip(". ") for x in b.text.split(". ")]
        shared = [x for x in b_sentences if x in a_sentences]
        assert shared and b_sentences[: len(shared)] == a_sentences[-len(shared) :]
        assert len(shared) < len(a_sentences)


def test_an_overlong_sentence_is_cut_between_words(tokenizer) -> None:  # type: ignore[no-untyped-def]
    words = [f"word{i}" for i in range(300)]
    drafts = Chunker(tokenizer, 50, 10).chunk(LoadedDocument("", [Section((), " ".join(words))]))
    assert len(drafts) > 3
    for d in drafts:
        assert all(w in words for w in d.text.split())  # no word cut in half
        assert d.token_count <= 50
    assert drafts[0].text.split()[0] == "word0" and drafts[-1].text.split()[-1] == "word299"
    assert set(words) == {w for d in drafts for w in d.text.split()}


def test_title_repeated_as_first_heading_is_not_doubled(tokenizer) -> None:  # type: ignore[no-untyped-def]
    doc = LoadedDocument("Leave policy", [Section(("Leave policy", "Sick leave"), "Ten days.")])
    [draft] = Chunker(tokenizer, 64, 0).chunk(doc)
    assert draft.embed_text == "Leave policy > Sick leave\nTen days."
