"""Slack rendering: escaping, mrkdwn, citation links, safe splitting of long answers."""

from __future__ import annotations

import re

from bot.slack import render
from bot.slack.text import clean_text, vote_value

LINKS = {"handbook/": "https://wiki.example.com/hb/"}


def test_model_text_cannot_ping_or_forge_links() -> None:
    text = render.to_mrkdwn("Hi <!channel> & <https://evil.example|click> <@U123>")
    assert "<!channel>" not in text and "<https://evil" not in text and "<@U123>" not in text
    assert text == "Hi &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; &lt;@U123&gt;"


def test_markdown_becomes_mrkdwn_but_code_is_kept() -> None:
    text = render.to_mrkdwn(
        "# Leave\n**Sick** leave, see [the wiki](https://w.example/x).\n- one\n```\n**raw** <b>\n```"
    )
    assert text.startswith("*Leave*\n*Sick* leave, see the wiki (https://w.example/x).\n• one\n```")
    assert "**raw** &lt;b&gt;" in text


def test_citations_link_to_their_sources() -> None:
    citations = [
        {"n": 1, "source": "handbook/leave.md", "title": "Leave policy", "quote": "10 days <sick>"},
        {"n": 2, "source": "/srv/other.txt", "title": "Other", "quote": ""},
        {"n": 3, "source": "https://intranet.example/it", "title": "IT", "quote": "q"},
    ]
    text = render.citation_text(citations, LINKS)
    assert "*[1]* <https://wiki.example.com/hb/leave.md|Leave policy>\n> 10 days &lt;sick&gt;" in text
    assert "*[2]* Other (`/srv/other.txt`)" in text
    assert "<https://intranet.example/it|IT>" in text
    body = render.link_markers("Ten days [1], see also [2] and [9].", citations, LINKS)
    assert body == "Ten days <https://wiki.example.com/hb/leave.md|[1]>, see also [2] and [9]."


def test_long_answers_split_at_boundaries_within_the_limit() -> None:
    paragraph = "Employees receive twenty days of paid leave per year. " * 30
    text = "\n\n".join([paragraph.strip()] * 5)
    parts = render.split_text(text, 2000)
    assert all(len(p) <= 2000 for p in parts)
    assert all(p.endswith(".") for p in parts)  # cut at paragraph or sentence ends
    assert " ".join(parts).split() == text.split()  # nothing lost


def test_splitting_chinese_without_spaces_and_keeping_links_and_code_whole() -> None:
    chinese = "員工每年享有二十天特別休假，未休完的天數可遞延至次年。" * 200
    parts = render.split_text(chinese, 1000)
    assert all(len(p) <= 1000 for p in parts) and "".join(parts) == chinese
    assert all(p.endswith("。") for p in parts[:-1])

    link = "<https://wiki.example.com/a-very-long-page|the policy>"
    text = ("word " * 190) + link + (" word" * 50)
    for part in render.split_text(text, 1000):
        assert part.count("<") == part.count(">")  # no link cut in half

    code = "```\n" + "\n".join(f"line {i}" for i in range(400)) + "\n```"
    parts = render.split_text(code, 1000)
    assert len(parts) > 1 and all(p.count("```") % 2 == 0 for p in parts)  # each part's code is closed


def test_entities_are_never_cut() -> None:
    text = "a" * 995 + "&amp;b" + " rest" * 10
    for part in render.split_text(text, 1000):
        assert not re.search(r"&[a-z]*$", part)


def test_questions_are_cleaned_of_slack_markup() -> None:
    assert clean_text("<@UBOT> how do I reset <https://sso.example|SSO>? &lt;urgent&gt;", "UBOT") == (
        "how do I reset SSO (https://sso.example)? <urgent>"
    )
    assert clean_text("see <#C123|it-help> <!here>", "UBOT") == "see #it-help @here"


def test_vote_reactions_with_skin_tones() -> None:
    assert [vote_value(r) for r in ("+1", "thumbsup::skin-tone-2", "-1::skin-tone-6", "thumbsdown")] == [
        1,
        1,
        -1,
        -1,
    ]
    assert vote_value("tada") is None and vote_value("heart::skin-tone-2") is None


def test_links_from_documents_or_the_model_cannot_inject() -> None:
    citations = [
        {"n": 1, "source": "https://wiki.example.com/a><!channel>", "title": "T", "quote": ""},
        {"n": 2, "source": "handbook/x><!here|x>.md", "title": "X", "quote": ""},
    ]
    text = render.citation_text(citations, LINKS) + render.link_markers("See [1] and [2].", citations, LINKS)
    assert "<!channel>" not in text and "<!here" not in text
    for link in re.findall(r"<([^>]*)>", text):
        assert link.count("|") == 1 and link.startswith("https://")  # one well-formed link each
    # A link the model writes shows its real target; its label cannot hide it.
    shown = render.to_mrkdwn("Log in at [the HR portal](https://evil.example/login).")
    assert shown == "Log in at the HR portal (https://evil.example/login)."
