"""Grounding end to end, on every platform: a draft the check rejects is never shown anywhere.

The model is the fake OpenAI-compatible server of tests/fake_openai.py, scripted per test
(``FakeOpenAI.answer``) and read by the real OpenAIBackend; retrieval over the example handbook,
the grounding check, the extractive fallback, the answer log and the platform adapters are the
real ones. Each platform's fake records everything kbot sent it: Slack's Web API calls
(``chat.postMessage``, ``chat.update``: texts and blocks), the Bot Framework connector's
activities (typing and messages; Teams shows no partial text, and an update, a PUT the fake does
not take, would fail the answer), the web chat's Server-Sent Events. A rejected draft must
appear in none of them; the extractive answer quoting the leave policy is shown instead, and the
answer log keeps the draft and the verdict.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent.answering import Answerer, AnswerResult, Progress, Question
from kbot.db.models import Answer
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.fake_teams import stream_info
from tests.slack_env import EXAMPLES, WIKI, mention
from tests.test_teams import TeamsEnv, teams_env

QUESTION = "How many days of sick leave do I get?"
LEAVE_POLICY = f"{WIKI}leave-policy.md"
SICK_SENTENCE = "Up to 10 days of paid sick leave per year."
# What the example handbook's leave policy says, as the extractive fallback quotes it.
EXTRACTIVE = f'According to *Leave policy* [1]: "{SICK_SENTENCE}"'
# A number from another passage of the same document (16 weeks of parental leave), as days.
WRONG_NUMBER = "Sick leave is 16 days per year [1]."
REPEATED = "The answer is: [1]\nThe answer is: [1]\nThe answer is: [1]"
CORRECT = "Employees get up to 10 days of paid sick leave per year [1]."
# Substrings of the rejected drafts that nothing kbot sends may contain.
LEAKS = {WRONG_NUMBER: ["Sick leave is 16", "16 days"], REPEATED: ["The answer is"]}


@dataclass
class Shown:
    """What one platform received for one question."""

    text: str  # the final answer's text, as the platform shows it
    sources: list[tuple[int, str, str, str]]  # (n, title, url, quote) of each citation shown
    texts: list[str]  # every text shown on the way, in order (placeholder, updates, deltas, final)
    sent: list[str]  # every payload kbot sent to the platform, as JSON


Ask = Callable[[TeamsEnv, str], Awaitable[Shown]]


async def ask_slack(env: TeamsEnv, question: str) -> Shown:
    slack = env.env.slack
    await env.env.event(mention(question, ts="1700000000.000001"))
    await wait_until(lambda: env.stats["answered"] == 1)
    [final] = env.env.shown()
    assert final["native"] and final["stopped"]  # streamed: the text, then stopStream's blocks
    sources_block, feedback, suggest = final["blocks"]
    assert (feedback["type"], suggest["type"]) == ("context_actions", "actions")
    sources = [
        (int(n), title, url, quote)
        for n, url, title, quote in re.findall(
            r"\*\[(\d+)\]\* <([^|>]+)\|([^>]+)>\n> (.*)", sources_block["text"]["text"]
        )
    ]
    assert sources_block["text"]["text"].startswith("*Sources*\n")
    texts = [
        c.params.get("markdown_text") or c.params.get("text")
        for c in slack.calls
        if c.method in ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream")
    ]
    sent = [json.dumps({"method": c.method, **c.params}, ensure_ascii=False) for c in slack.calls]
    # A streamed message shows its pieces joined: a draft sent word by word is caught there.
    sent += [slack.streamed(c.params["_ts"]) for c in slack.named("chat.startStream") if "_ts" in c.params]
    return Shown(final["text"], sources, texts, sent)


async def ask_teams(env: TeamsEnv, question: str) -> Shown:
    response = await env.post(env.activity(text=question))
    assert response.status in (200, 201)
    await wait_until(lambda: env.stats["answered"] == 1)
    assert {s.activity["type"] for s in env.connector.sent} == {"typing", "message"}
    [message] = env.connector.messages()
    entity, final = message["entities"]  # the citations, and the end of the stream
    assert final["type"] == "streaminfo" and final["streamType"] == "final"
    sources = [
        (c["position"], c["appearance"]["name"], c["appearance"]["url"], c["appearance"]["abstract"])
        for c in entity["citation"]
    ]
    # What shows as the answer: streamed text and messages (informative updates say what kbot does).
    texts = [
        s.activity["text"]
        for s in env.connector.sent
        if "text" in s.activity and (stream_info(s.activity) or {}).get("streamType") != "informative"
    ]
    sent = [json.dumps({"path": s.path, **s.activity}, ensure_ascii=False) for s in env.connector.sent]
    return Shown(message["text"], sources, texts, sent)


async def ask_web(env: TeamsEnv, question: str) -> Shown:
    body = {"id": "question-0001", "conversation": "conversation-0001", "text": question}
    response = await env.env.client.post("/api/chat", json=body)
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    raw = await response.text()
    events: list[tuple[str, dict[str, Any]]] = []
    for block in raw.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines["event"], json.loads(lines["data"])))
    kinds = [e for e, _ in events]
    assert kinds[0] == "working" and kinds[-1] == "end" and kinds.count("answer") == 1
    answer = next(d for e, d in events if e == "answer")
    sources = [(c["n"], c["title"], c["url"], c["quote"]) for c in answer["citations"]]
    texts = [d["text"] for e, d in events if e in ("delta", "answer")]
    return Shown(answer["text"], sources, texts, [raw])


def slack_final(answer: str) -> str:
    """How Slack streams ``answer`` (Markdown): each [1] a link to the leave policy."""
    return answer.replace("[1]", f"[[1]]({LEAVE_POLICY})")


# The texts each platform shows for an answer, in order: the checked text arrives in one piece,
# so Slack streams it in one start (the thread status says what kbot does until then);
# Teams shows only the final message; the web chat sends the answer event, no delta.
SHOWS: dict[str, Callable[[str], list[str]]] = {
    "slack": lambda answer: [slack_final(answer)],
    "teams": lambda answer: [answer],
    "web": lambda answer: [answer],
}
PLATFORMS: dict[str, Ask] = {"slack": ask_slack, "teams": ask_teams, "web": ask_web}
FINAL: dict[str, Callable[[str], str]] = {"slack": slack_final, "teams": str, "web": str}


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[TeamsEnv]:
    """kbot serve with Slack, Teams and the web chat on (strict grounding: the default)."""
    async with teams_env(tmp_path, embedder) as e:
        assert e.env.settings.grounding == "strict"
        yield e


def spy_results(env: TeamsEnv, monkeypatch: pytest.MonkeyPatch) -> list[AnswerResult]:
    """The AnswerResults the chat service receives from the answerer."""
    answerer: Answerer = env.env.runtime.service.answerer
    original = answerer.stream
    results: list[AnswerResult] = []

    async def stream(question: Question, **kwargs: Any) -> AsyncIterator[str | Progress | AnswerResult]:
        async for item in original(question, **kwargs):
            if isinstance(item, AnswerResult):
                results.append(item)
            yield item

    monkeypatch.setattr(answerer, "stream", stream)
    return results


async def answer_rows(env: TeamsEnv) -> list[Answer]:
    async with env.env.runtime.service.answerer.kb.db.session() as s:
        return list((await s.scalars(select(Answer))).all())


def leaks(shown: Shown, draft: str) -> list[str]:
    """The payloads that contain the draft or one of its telltale pieces."""
    return [sent for sent in shown.sent if any(piece in sent for piece in [draft, *LEAKS.get(draft, [])])]


@dataclass(frozen=True)
class Rejected:
    draft: str  # what the scripted model writes
    whole: bool  # sent as one chunk, else word by word (tests.fake_openai)
    generated: str  # what the answer log keeps of it
    reasons: list[str]  # the grounding check's


REJECTED = [
    pytest.param(Rejected(WRONG_NUMBER, False, WRONG_NUMBER, ["unsupported number: 16 day"]), id="16-days"),
    pytest.param(Rejected(REPEATED, True, REPEATED, ["degenerate: repeated lines"]), id="repeated"),
    # Streamed, a looping draft is cut at the end of its first line (agent.graph.generate stops
    # where the check would reject it anyway): the log keeps what was generated until then.
    pytest.param(
        Rejected(REPEATED, False, "The answer is: [1]\nThe", ["degenerate: template answer"]),
        id="repeated-streamed",
    ),
]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case", REJECTED)
async def test_a_rejected_draft_is_never_shown_the_extractive_answer_is(
    env: TeamsEnv, monkeypatch: pytest.MonkeyPatch, platform: str, case: Rejected
) -> None:
    env.env.model.answer, env.env.model.whole = case.draft, case.whole
    results = spy_results(env, monkeypatch)
    shown = await PLATFORMS[platform](env, QUESTION)

    assert len(env.env.model.requests) == 1  # the scripted model wrote the draft
    assert leaks(shown, case.draft) == []
    assert shown.text == FINAL[platform](EXTRACTIVE)
    assert shown.texts == SHOWS[platform](EXTRACTIVE)
    assert shown.sources == [(1, "Leave policy", LEAVE_POLICY, SICK_SENTENCE)]

    [result] = results
    assert (result.status, result.answer, result.generated, result.grounded) == (
        "ok",
        EXTRACTIVE,
        case.generated,
        False,
    )
    assert result.grounding == {
        "mode": "strict",
        "passed": False,
        "reasons": case.reasons,
        "fallback": "extractive",
    }
    assert [(c["n"], c["source"], c["quote"]) for c in result.citations] == [
        (1, str(EXAMPLES / "leave-policy.md"), SICK_SENTENCE)
    ]
    [row] = await answer_rows(env)
    assert (row.id, row.platform, row.answer, row.generated, row.grounding) == (
        result.answer_id,
        platform,
        EXTRACTIVE,
        case.generated,
        result.grounding,
    )
    assert row.citations == result.citations


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_grounded_draft_is_shown_as_written(
    env: TeamsEnv, monkeypatch: pytest.MonkeyPatch, platform: str
) -> None:
    env.env.model.answer = CORRECT
    results = spy_results(env, monkeypatch)
    shown = await PLATFORMS[platform](env, QUESTION)

    assert len(env.env.model.requests) == 1
    assert shown.text == FINAL[platform](CORRECT)
    assert shown.texts == SHOWS[platform](CORRECT)
    assert shown.sources == [(1, "Leave policy", LEAVE_POLICY, SICK_SENTENCE)]
    [result] = results
    assert (result.status, result.answer, result.generated, result.grounded) == ("ok", CORRECT, CORRECT, True)
    assert result.grounding == {"mode": "strict", "passed": True, "reasons": [], "fallback": None}
    assert [(c["n"], c["source"]) for c in result.citations] == [(1, str(EXAMPLES / "leave-policy.md"))]
    [row] = await answer_rows(env)
    assert (row.id, row.platform, row.answer, row.generated, row.grounding, row.citations) == (
        result.answer_id,
        platform,
        CORRECT,
        CORRECT,
        result.grounding,
        result.citations,
    )


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_with_grounding_off_the_same_draft_does_reach_the_platform(
    tmp_path: Path, embedder: Embedder, platform: str
) -> None:
    """The control: what the tests above look through does catch a draft when one is shown."""
    async with teams_env(tmp_path, embedder, grounding="off") as env:
        env.env.model.answer = WRONG_NUMBER
        shown = await PLATFORMS[platform](env, QUESTION)
        assert leaks(shown, WRONG_NUMBER) != []
        # Streamed into Slack as it is written, so its [1] cannot become a link afterwards.
        assert shown.text == (WRONG_NUMBER if platform == "slack" else FINAL[platform](WRONG_NUMBER))
        [row] = await answer_rows(env)
        assert row.grounding is not None
        assert (row.generated, row.grounding["passed"], row.grounding["fallback"]) == (
            WRONG_NUMBER,
            False,
            None,
        )
