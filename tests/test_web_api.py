"""The web chat, dashboard and metrics APIs through HTTP, on a running server with a fake model.

The browser drives the same endpoints in tests/test_web_ui.py; here each rule is pinned down:
identity, dedupe, ACL, feedback only on one's own answers, bad input → 4xx, admin auth.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from sqlalchemy import select

from kbot.db.models import Answer, Correction, Vote
from knowledge.embeddings import Embedder
from tests.slack_env import SlackEnv, slack_env

TOKEN = "admin-token-for-tests"


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path, embedder, admin_token=TOKEN) as env:
        yield env


def _id() -> str:
    return uuid.uuid4().hex


async def events(response: ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for block in (await response.text()).split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((lines["event"], json.loads(lines["data"])))
    return out


async def ask(env: SlackEnv, text: str, *, cookies: dict[str, str] | None = None, **extra: Any) -> Any:
    body = {"id": _id(), "conversation": _id(), "text": text, **extra}
    return await env.client.post("/api/chat", json=body, cookies=cookies or {})


def answer_of(stream: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return next(data for event, data in stream if event == "answer")


async def test_chat_streams_the_answer_with_citations_and_sets_a_visitor(env: SlackEnv) -> None:
    response = await ask(env, "How many days of sick leave do I get?")
    visitor = response.cookies["kbot_visitor"]
    assert visitor["httponly"] and visitor["samesite"] == "Lax"
    stream = await events(response)
    kinds = [e for e, _ in stream]
    # The draft is held back for the grounding check: the checked text comes whole, as the answer,
    # after the status lines of its stages (no delta: nothing unchecked is sent).
    assert kinds == ["working", "status", "status", "answer", "end"]
    statuses = [d["text"] for e, d in stream if e == "status"]
    assert statuses[0] == "Searching handbook…" and statuses[1].startswith("Reading ")
    answer = answer_of(stream)
    assert answer["text"] == "Sick leave is 10 days per year [1]."
    [citation] = answer["citations"]
    assert citation["title"] == "Leave policy" and "sick leave" in citation["quote"].lower()
    assert citation["url"] == "https://wiki.example.com/handbook/leave-policy.md"
    async with env.runtime.service.answerer.kb.db.session() as s:
        row = await s.get(Answer, answer["answer_id"])
    assert row is not None and row.platform == "web" and row.asker.startswith("anon-")
    assert visitor.value not in row.asker  # only a hash of the cookie is stored


async def test_the_same_question_id_is_answered_once(env: SlackEnv) -> None:
    body = {"id": _id(), "conversation": _id(), "text": "How many days of sick leave do I get?"}
    first = await events(await env.client.post("/api/chat", json=body))
    second = await events(await env.client.post("/api/chat", json=body))
    assert answer_of(first)
    assert [e for e, _ in second] == ["notice", "end"] and second[-1][1]["outcome"] == "duplicate"
    assert len(env.model.requests) == 1


async def test_votes_and_corrections_reach_the_vote_log_only_from_the_asker(env: SlackEnv) -> None:
    response = await ask(env, "How many days of sick leave do I get?")
    cookies = {"kbot_visitor": response.cookies["kbot_visitor"].value}
    answer_id = answer_of(await events(response))["answer_id"]

    def feedback(body: dict[str, Any], who: dict[str, str] = cookies) -> Any:
        return env.client.post("/api/feedback", json={"answer_id": answer_id, **body}, cookies=who)

    assert (await feedback({"kind": "vote", "value": 1})).status == 200
    assert (await feedback({"kind": "vote", "value": -1})).status == 200  # a change replaces it
    offered = await (await env.client.get("/api/feedback/reasons")).json()
    assert [r["value"] for r in offered["reasons"]][:2] == ["wrong_facts", "off_topic"]
    # The 👎's reasons, as the page sends them: they become the vote's comment, as on Slack.
    why = {"kind": "vote", "value": -1, "reasons": ["missing_info", "wrong_facts"], "text": " It is 12 now. "}
    assert (await feedback(why)).status == 200
    assert (await feedback({**why, "reasons": ["made_up"]})).status == 400
    assert (await feedback({**why, "value": 1})).status == 400  # reasons say what was wrong
    stranger = {"kbot_visitor": "x" * 32}
    refused = await feedback({"kind": "vote", "value": 1}, stranger)
    assert refused.status == 404 and "shown to you" in await refused.text()
    saved = await feedback({"kind": "correction", "text": "Ten days a year, see the leave policy."})
    assert saved.status == 200
    async with env.runtime.service.answerer.kb.db.session() as s:
        votes = (await s.scalars(select(Vote).where(Vote.answer_id == answer_id))).all()
        corrections = (await s.scalars(select(Correction).where(Correction.answer_id == answer_id))).all()
    assert [(v.value, v.origin, v.platform) for v in votes] == [(-1, "web", "web")]
    assert votes[0].comment == "Wrong or outdated facts; Missing information; It is 12 now."
    assert [c.text for c in corrections] == ["Ten days a year, see the leave policy."]
    assert (await feedback({"kind": "unvote", "value": -1})).status == 200
    async with env.runtime.service.answerer.kb.db.session() as s:
        assert (await s.scalars(select(Vote).where(Vote.answer_id == answer_id))).all() == []


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("/api/chat", "not json", "application/json", 400),
        ("/api/chat", '["a list"]', "application/json", 400),
        ("/api/chat", '{"id": "x", "conversation": "abcdefgh", "text": "hi"}', "application/json", 400),
        ("/api/chat", '{"id": "abcdefgh", "conversation": "abcdefgh", "text": ""}', "application/json", 400),
        ("/api/chat", '{"id": "abcdefgh", "conversation": "abcdefgh", "text": 5}', "application/json", 400),
        ("/api/chat", "id=abcdefgh&text=hi", "application/x-www-form-urlencoded", 415),
        ("/api/feedback", '{"answer_id": "abcdefgh", "kind": "love"}', "application/json", 400),
        ("/api/feedback", '{"answer_id": "abcdefgh", "kind": "vote", "value": 7}', "application/json", 400),
        (
            "/api/feedback",
            '{"answer_id": "abcdefgh", "kind": "correction", "text": "x", "reasons": ["other"]}',
            "application/json",
            400,
        ),
        (
            "/api/feedback",
            '{"answer_id": "abcdefgh", "kind": "correction", "text": " "}',
            "application/json",
            400,
        ),
        ("/api/feedback", '{"answer_id": "abcdefgh", "kind": "vote", "value": 1}', "application/json", 404),
    ],
)
async def test_bad_requests_are_the_clients_mistake(
    env: SlackEnv, path: str, body: str, content_type: str, status: int
) -> None:
    response = await env.client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status == status
    assert response.headers["X-Request-Id"]
    assert env.model.requests == []


async def test_cross_site_posts_are_refused(env: SlackEnv) -> None:
    body = {"id": _id(), "conversation": _id(), "text": "How many days of sick leave do I get?"}
    response = await env.client.post("/api/chat", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status == 403 and env.model.requests == []


async def test_a_long_question_is_cut_with_a_notice(env: SlackEnv) -> None:
    stream = await events(await ask(env, "sick leave " * 1000))
    # Over the 4,000-character cap and over 512 tokens of the model: the token cut is the one said.
    assert stream[0] == ("notice", {"text": "Your question was cut to its first 512 tokens."})
    assert answer_of(stream)


async def test_anonymous_visitors_never_see_restricted_documents(env: SlackEnv) -> None:
    stream = await events(await ask(env, "What do engineers at level 2 earn? Salary bands"))
    assert "Salary bands" not in json.dumps(stream)
    assert all("70,000" not in json.dumps(body) for _, body in env.model.requests)


async def test_a_trusted_proxy_header_names_the_asker_and_their_groups(
    tmp_path: Path, embedder: Embedder
) -> None:
    groups = {"slack:S0HR": ["hr"], "web:alice@example.com": ["hr"]}
    async with slack_env(tmp_path, embedder, web_user_header="X-Forwarded-Email", groups=groups) as env:
        unsigned = await ask(env, "Salary bands for level 2?")
        assert unsigned.status == 401 and "X-Forwarded-Email" in await unsigned.text()
        headers = {"X-Forwarded-Email": "alice@example.com"}
        body = {"id": _id(), "conversation": _id(), "text": "What do engineers at level 2 earn? Salary bands"}
        stream = await events(await env.client.post("/api/chat", json=body, headers=headers))
        assert "Salary bands" in json.dumps(answer_of(stream)["citations"])
        async with env.runtime.service.answerer.kb.db.session() as s:
            askers = set(await s.scalars(select(Answer.asker)))
        assert askers == {"alice@example.com"}


async def test_dashboard_needs_the_admin(env: SlackEnv) -> None:
    assert (await env.client.get("/api/dashboard")).status == 401
    wrong = await env.client.get("/api/dashboard", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await env.client.get("/login?token=nope", allow_redirects=False)).status == 401
    login = await env.client.get(f"/login?token={TOKEN}", allow_redirects=False)
    assert login.status == 302 and login.headers["Location"] == "/dashboard"
    session = login.cookies["kbot_admin"]
    assert TOKEN not in session.value and session["httponly"]
    assert not session["secure"]
    behind_tls = await env.client.get(
        f"/login?token={TOKEN}", allow_redirects=False, headers={"X-Forwarded-Proto": "https"}
    )
    assert behind_tls.cookies["kbot_admin"]["secure"]  # TLS ends at the proxy: still a Secure cookie
    ok = await env.client.get("/api/dashboard", cookies={"kbot_admin": session.value})
    assert ok.status == 200 and (await ok.json())["days"] == 30
    forged = await env.client.get("/api/dashboard", cookies={"kbot_admin": "0" * 64})
    assert forged.status == 401
    assert (
        await env.client.get("/api/dashboard?days=0", headers={"Authorization": f"Bearer {TOKEN}"})
    ).status == 400


async def test_dashboard_basic_auth(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder, admin_password="s3cret") as env:
        challenge = await env.client.get("/api/dashboard")
        assert challenge.status == 401 and challenge.headers["WWW-Authenticate"].startswith("Basic")
        good = base64.b64encode(b"admin:s3cret").decode()
        bad = base64.b64encode(b"admin:guess").decode()
        assert (
            await env.client.get("/api/dashboard", headers={"Authorization": f"Basic {good}"})
        ).status == 200
        assert (
            await env.client.get("/api/dashboard", headers={"Authorization": f"Basic {bad}"})
        ).status == 401
        assert (await env.client.get("/api/dashboard", headers={"Authorization": "Basic !!"})).status == 401


async def test_dashboard_figures_follow_answers_and_votes(env: SlackEnv) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await ask(env, "How many days of sick leave do I get?")
    cookies = {"kbot_visitor": response.cookies["kbot_visitor"].value}
    answer_id = answer_of(await events(response))["answer_id"]
    await events(await ask(env, "Where is the moon base cafeteria?"))  # nothing about it: a gap
    vote = {"answer_id": answer_id, "kind": "vote", "value": 1}
    assert (await env.client.post("/api/feedback", json=vote, cookies=cookies)).status == 200
    data = await (await env.client.get("/api/dashboard", headers=headers)).json()
    # One model answer, grounded: the grounding check kept it; the gap called no model.
    assert data["totals"] == {
        "answers": 2,
        "up": 1,
        "down": 0,
        "rate": 1.0,
        "gaps": 1,
        "generated": 1,
        "fallback": 0,
        "fallback_share": 0.0,
    }
    assert [(r["platform"], r["answers"]) for r in data["answers_per_day"]] == [("web", 2)]
    assert [(r["adapter"], r["up"], r["down"]) for r in data["satisfaction"]] == [("base", 1, 0)]
    assert data["gaps"][0]["question"] == "Where is the moon base cafeteria?"
    assert data["top_documents"][0]["title"] == "Leave policy"


async def test_dashboard_shows_the_share_of_answers_that_needed_the_fallback(env: SlackEnv) -> None:
    def logged(adapter: str | None, fallback: str | None, platform: str = "web") -> Answer:
        verdict = {"mode": "strict", "passed": fallback is None, "reasons": [], "fallback": fallback}
        return Answer(
            id=_id(),
            platform=platform,
            asker="U1",
            collections=["hr"],
            question="q",
            search_query="q",
            messages=[],
            retrieved=[],
            answer="x",
            citations=[],
            status="not_found" if fallback == "not_found" else "ok",
            base_model="m",
            adapter_version=adapter,
            latency_ms=1,
            generated="draft",
            grounding=verdict,
        )

    rows = [
        logged(None, None),
        logged(None, "extractive"),
        logged("dpo-1", "not_found"),
        *(logged("dpo-1", None) for _ in range(3)),
        logged("dpo-1", "extractive", platform="eval"),  # never counted
    ]
    async with env.runtime.service.answerer.kb.db.session() as s:
        s.add_all(rows)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    data = await (await env.client.get("/api/dashboard", headers=headers)).json()
    assert (data["totals"]["generated"], data["totals"]["fallback"], data["totals"]["fallback_share"]) == (
        6,
        2,
        0.3333,
    )
    by_adapter = {
        r["adapter"]: (r["answers"], r["extractive"], r["not_found"], r["share"])
        for r in data["grounding_by_adapter"]
    }
    assert by_adapter == {"base": (2, 1, 0, 0.5), "dpo-1": (4, 0, 1, 0.25)}
    [base_today, dpo_today] = data["grounding"]
    assert (base_today["adapter"], base_today["share"], dpo_today["adapter"], dpo_today["share"]) == (
        "base",
        0.5,
        "dpo-1",
        0.25,
    )
    # The page has the section, and its script reads these fields.
    page = await (await env.client.get("/dashboard")).text()
    assert 'id="fallback-note"' in page and 'id="chart-fallback"' in page and 'id="fallback"' in page
    script = await (await env.client.get("/static/dashboard.js")).text()
    assert "Answers that needed the fallback" in script
    assert all(key in script for key in ("fallback_share", "grounding_by_adapter", "data.grounding"))


async def test_metrics_count_traffic_and_requests_carry_ids(env: SlackEnv) -> None:
    def value(text: str, line: str) -> float:
        found = [ln for ln in text.splitlines() if ln.startswith(line + " ")]
        return float(found[0].split()[-1]) if found else 0.0

    before = await (await env.client.get("/metrics")).text()
    response = await ask(env, "How many days of sick leave do I get?")
    cookies = {"kbot_visitor": response.cookies["kbot_visitor"].value}
    answer_id = answer_of(await events(response))["answer_id"]
    vote = {"answer_id": answer_id, "kind": "vote", "value": -1}
    assert (await env.client.post("/api/feedback", json=vote, cookies=cookies)).status == 200
    traced = await env.client.get("/healthz", headers={"X-Request-Id": "trace-123"})
    assert traced.headers["X-Request-Id"] == "trace-123"
    odd = await env.client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert odd.headers["X-Request-Id"] != "bad id\twith spaces" and len(odd.headers["X-Request-Id"]) == 32
    metrics = await env.client.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    after = await metrics.text()
    for line in (
        'kbot_answers_total{platform="web",status="ok"}',
        'kbot_messages_total{outcome="answered",platform="web"}',
        'kbot_feedback_total{kind="vote",platform="web",value="-1"}',
        'kbot_http_requests_total{method="POST",route="/api/chat",status="200"}',
        'kbot_retrieval_seconds_count{platform="web"}',
        'kbot_generation_seconds_count{platform="web"}',
        'kbot_answer_seconds_count{platform="web"}',
    ):
        assert value(after, line) == value(before, line) + 1, line
    assert value(after, 'kbot_active_adapter{version="none"}') == 1
    assert "kbot_errors_total" in after
