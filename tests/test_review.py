"""Corrections are reviewed, then used at once: the review service on SQLite and PostgreSQL with the
real verified index (Qdrant Edge, the bundled MiniLM), the export's rules for what was and was not
approved, and the dashboard's review API end to end (web chat → review → the same question again)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent.prompts import build_messages
from agent.verified_reply import as_hit
from finetune.export import FORMATS, VERIFIED_RULE, ExportOptions, export_feedback
from finetune.feedback_load import DEFAULT_SYSTEM_PROMPT
from finetune.review import TRUST, Mode, Review, StaleReview
from finetune.votes import VoteLog
from kbot.db.models import Collection, Correction
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder
from knowledge.verified import VerifiedAnswer, VerifiedAnswers
from tests.conftest import clear_tables
from tests.slack_env import SlackEnv, slack_env
from tests.test_export import answer
from tests.test_web_api import answer_of, ask, events

TOKEN = "review-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SICK = "How many days of sick leave do I get?"


@pytest.fixture
async def store(sql_url: str, tmp_path: Path, embedder: Embedder) -> AsyncIterator[KnowledgeBase]:
    """A knowledge base on each SQL store, with the collection the test answers are asked in."""
    settings = Settings(data_dir=tmp_path / "data", database_url=sql_url)
    kb = await KnowledgeBase.open(settings, embedder=embedder)
    async with kb.db.session() as s:
        s.add(Collection(name="hr", embedding_model=embedder.name, embedding_dim=embedder.dimension))
    yield kb
    await clear_tables(kb.db)
    await kb.close()


def review_of(kb: KnowledgeBase, mode: Mode = "review") -> Review:
    return Review(kb.db, VerifiedAnswers(kb), mode)


async def found(kb: KnowledgeBase, question: str) -> str | None:
    """The verified answer someone asking ``question`` in hr would be given now."""
    match = await VerifiedAnswers(kb).match(question, ["hr"], [])
    return match.text if match else None


def every_row(result: Any) -> str:
    return str([result.rows(fmt) for fmt in FORMATS])


def taught(result: Any) -> str:
    """What the rows teach: their assistant turns (their prompts hold the retrieved handbook)."""
    turns = [
        m["content"]
        for fmt in FORMATS
        for row in result.rows(fmt)
        for key in ("chosen", "rejected", "completion", "messages")
        for m in row.get(key, ())
        if m["role"] == "assistant"
    ]
    return str(turns)


async def corrected(kb: KnowledgeBase, question: str, shown: str, text: str, **kwargs: Any) -> int:
    answer_id = await answer(kb.db, question, shown, **kwargs)
    written = await VoteLog(kb.db).correct(answer_id=answer_id, platform="slack", author="U2", text=text)
    assert written is not None
    return written


async def test_only_approved_corrections_are_trained_on_and_answered_from(store: KnowledgeBase) -> None:
    review = review_of(store)
    pending = await corrected(store, "Is the gym paid?", "No.", "PENDING-CANARY 30 euros a month.")
    rejected = await corrected(store, "Is parking free?", "No.", "REJECTED-CANARY always free.")
    edited = await corrected(store, "How many sick days do I get?", "Five days.", "Ten days.")
    as_written = await corrected(store, "How long is parental leave?", "Ask HR.", "16 weeks [1].")
    assert (await review.reject(rejected, "U0")) is not None
    item = await review.approve(edited, "U0", text="Ten days a year [1].")
    assert item is not None and (item.status, item.approved_text, item.reviewer) == (
        "approved",
        "Ten days a year [1].",
        "U0",
    )
    assert item.acl == ["*"]  # the corrected answer's own scope: its passages are public
    await review.approve(as_written, "U0")
    scoped = await corrected(store, "What is the bonus?", "None.", "SCOPED-CANARY 5% for hr.")
    await review.approve(scoped, "U0", acl=["hr"])  # the reviewer narrowed who it answers
    assert await review.counts() == {"pending": 1, "approved": 3, "rejected": 1}

    result = await export_feedback(store.db, ExportOptions())
    assert "CANARY" not in every_row(result)  # DPO, KTO and SFT alike
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in result.dpo} == {
        ("Ten days a year [1].", "Five days."),  # the reviewer's edit, not "Ten days."
        ("16 weeks [1].", "Ask HR."),
    }
    assert {r["messages"][-1]["content"] for r in result.sft} == {"Ten days a year [1].", "16 weeks [1]."}
    assert result.dropped["correction awaiting review"] == 1
    assert result.dropped["rejected correction"] == 1
    assert result.dropped["correction not approved for everyone"] == 1  # an adapter answers everyone
    assert "dropped, rejected correction: 1" in result.summary()

    # Answered from at once: the edited text; a rejected or pending correction never.
    assert await found(store, "How many sick days do I get?") == "Ten days a year [1]."
    assert await found(store, "Is parking free?") is None and await found(store, "Is the gym paid?") is None
    assert await found(store, "What is the bonus?") is None  # not for people outside hr
    hr = await VerifiedAnswers(store).match("What is the bonus?", ["hr"], ["hr"])
    assert hr is not None and hr.text == "SCOPED-CANARY 5% for hr."
    # Rejected after approval: out of the index and out of training.
    await review.reject(as_written, "U0")
    assert await found(store, "How long is parental leave?") is None
    again = await export_feedback(store.db, ExportOptions())
    assert "16 weeks" not in taught(again) and again.dropped["rejected correction"] == 2
    assert await review.approve(pending + 1000, "U0") is None  # no such correction


async def test_a_rebuilt_vector_store_gets_the_approved_answers_back(
    store: KnowledgeBase, sql_url: str, tmp_path: Path, embedder: Embedder
) -> None:
    review = review_of(store)
    approved = await corrected(store, "How many sick days do I get?", "Five days.", "Ten days.")
    await review.approve(approved, "U0", text="Ten days a year [1].")
    scoped = await corrected(store, "What is the bonus?", "None.", "5% for hr.")
    await review.approve(scoped, "U0", acl=["hr"])
    await review.reject(await corrected(store, "Is parking free?", "No.", "Always free."), "U0")
    assert await review.restore_verified() == 0  # nothing is missing: nothing is embedded again
    # The same SQL store, a new, empty vector store (a Qdrant server now, or a shard deleted).
    rebuilt = await KnowledgeBase.open(
        Settings(data_dir=tmp_path / "rebuilt", database_url=sql_url), embedder=embedder
    )
    try:
        assert await found(rebuilt, "How many sick days do I get?") is None
        assert await review_of(rebuilt).restore_verified() == 2
        assert await found(rebuilt, "How many sick days do I get?") == "Ten days a year [1]."
        assert await found(rebuilt, "What is the bonus?") is None  # its scope came back with it
        hr = await VerifiedAnswers(rebuilt).match("What is the bonus?", ["hr"], ["hr"])
        assert hr is not None and hr.text == "5% for hr."
        assert await found(rebuilt, "Is parking free?") is None
        assert await review_of(rebuilt).restore_verified() == 0
    finally:
        await rebuilt.close()


async def test_an_edit_is_reviewed_again_and_trust_approves_it_again(store: KnowledgeBase) -> None:
    votes, review = VoteLog(store.db), review_of(store)
    answer_id = await answer(store.db, "How many sick days do I get?", "Five days.")
    first = await votes.correct(answer_id=answer_id, platform="teams", author="X", text="Ten days.")
    assert first is not None
    await review.arrived(first)  # review mode: it waits
    assert [c.status for c in await votes.corrections()] == ["pending"]
    assert await found(store, "How many sick days do I get?") is None
    await review.approve(first, "U0")
    assert await found(store, "How many sick days do I get?") == "Ten days."

    # The same text again (a form sent twice) keeps the approval.
    assert await votes.correct(answer_id=answer_id, platform="teams", author="X", text=" Ten days. ") == first
    await review.arrived(first)
    assert [c.status for c in await votes.corrections()] == ["approved"]
    # A new text: pending, not answered from, not trained on, until approved again.
    await votes.correct(answer_id=answer_id, platform="teams", author="X", text="Twelve days [1].")
    await review.arrived(first)
    async with store.db.session() as s:
        row = await s.get(Correction, first)
    assert row is not None and (row.status, row.approved_text, row.reviewer, row.acl) == (
        "pending",
        None,
        "",
        None,
    )
    assert await found(store, "How many sick days do I get?") is None
    result = await export_feedback(store.db, ExportOptions())
    assert result.dpo == [] and result.dropped["correction awaiting review"] == 1
    # A reviewer who loaded the old text cannot approve the new one unseen.
    with pytest.raises(StaleReview, match="reload the queue"):
        await review.approve(first, "U0", seen=row.created_at)

    # Trust: approved on arrival, edits included.
    trusting = review_of(store, TRUST)
    await votes.correct(answer_id=answer_id, platform="teams", author="X", text="Twelve days a year [1].")
    await trusting.arrived(first)
    item = await trusting.item(first)
    assert item is not None and (item.status, item.reviewer) == ("approved", TRUST)
    assert await found(store, "How many sick days do I get?") == "Twelve days a year [1]."
    result = await export_feedback(store.db, ExportOptions())
    assert {r["chosen"][0]["content"] for r in result.dpo} == {"Twelve days a year [1]."}


async def test_an_approved_correction_of_not_found_becomes_an_sft_row(store: KnowledgeBase) -> None:
    review = review_of(store)
    text = "Ask the facilities desk for a parking badge; parking is free for staff."
    missing = await corrected(store, "Is parking free?", "I could not find this.", text, status="not_found")
    waiting = await corrected(store, "Is the gym paid?", "I could not find this.", "Yes.", status="not_found")
    pending = await export_feedback(store.db, ExportOptions())
    assert pending.sft == [] and pending.dropped["correction awaiting review"] == 2
    written = datetime.now(UTC)

    item = await review.approve(missing, "U0")
    assert item is not None and item.not_found and item.reviewed_at is not None
    result = await export_feedback(store.db, ExportOptions())
    assert result.dpo == [] and result.kto == []  # no model text to reject
    [row] = result.sft
    verified = VerifiedAnswer(missing, "Is parking free?", text, ["hr"], ["*"], item.reviewed_at)
    prompt = build_messages(DEFAULT_SYSTEM_PROMPT, [], [as_hit(verified, ["hr"])], "Is parking free?")
    assert row["messages"] == [*prompt, {"role": "assistant", "content": text}]
    assert f'[1] verified answer, {item.reviewed_at.date().isoformat()}: "{text}"' in prompt[-1]["content"]
    assert result.made[VERIFIED_RULE] == 1 and result.dropped["correction awaiting review"] == 1
    assert "correction of an answer made without the model" not in result.dropped
    custom = await export_feedback(store.db, ExportOptions(system_prompt="Answer as the HR team."))
    assert custom.sft[0]["messages"][0]["content"].startswith("Answer as the HR team.")
    # Written before the last run, approved since: new feedback for the next one.
    later = await export_feedback(store.db, ExportOptions(since=written))
    assert later.made[VERIFIED_RULE] == 1 and "correction awaiting review" not in later.dropped
    assert waiting  # still pending: no row


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path, embedder, admin_token=TOKEN) as env:
        yield env


async def web_correction(env: SlackEnv, text: str, reason: str = "") -> tuple[str, dict[str, str]]:
    """Ask in the web chat, 👎 it (with ``reason``), write ``text`` as the better answer."""
    response = await ask(env, SICK)
    cookies = {"kbot_visitor": response.cookies["kbot_visitor"].value}
    answer_id = answer_of(await events(response))["answer_id"]
    for body in ({"kind": "vote", "value": -1, "text": reason}, {"kind": "correction", "text": text}):
        sent = await env.client.post("/api/feedback", json={"answer_id": answer_id, **body}, cookies=cookies)
        assert sent.status == 200, await sent.text()
    return answer_id, cookies


async def test_the_review_api_shows_the_queue_and_approving_answers_at_once(env: SlackEnv) -> None:
    reason = "Outdated: HR raised it to twelve days in January."
    answer_id, _ = await web_correction(env, "Twelve days of paid sick leave a year.", reason)
    queue = await env.client.get("/api/corrections", headers=ADMIN)
    assert queue.status == 200 and queue.headers["Cache-Control"] == "no-store"
    data = await queue.json()
    assert data["counts"] == {"pending": 1, "approved": 0, "rejected": 0}
    [item] = data["items"]
    assert (item["answer_id"], item["question"], item["answer"]) == (answer_id, SICK, env.model.answer)
    assert item["text"] == "Twelve days of paid sick leave a year." and item["platform"] == "web"
    assert item["reasons"] == [{"platform": "web", "text": reason}]  # the 👎 reason, as written
    [source] = [s for s in item["sources"] if s["cited"]]
    assert source["title"] == "Leave policy" and "sick leave" in source["text"].lower()
    assert not item["not_found"] and item["verified"] is None

    edit = "Up to 12 days of paid sick leave per year."
    approved = await env.client.post(
        f"/api/corrections/{item['id']}",
        json={"action": "approve", "text": edit, "updated_at": item["updated_at"]},
        headers=ADMIN,
    )
    assert approved.status == 200, await approved.text()
    body = await approved.json()
    assert body["item"]["approved_text"] == edit and body["counts"]["pending"] == 0
    asked = len(env.model.requests)
    again = answer_of(await events(await ask(env, SICK)))  # someone else, the same question
    assert again["text"] == edit and len(env.model.requests) == asked  # the model was not asked
    assert again["citations"][0]["title"].startswith("verified answer, ")
    rejected = await env.client.post(
        f"/api/corrections/{item['id']}", json={"action": "reject"}, headers=ADMIN
    )
    assert rejected.status == 200 and (await rejected.json())["item"]["status"] == "rejected"
    assert answer_of(await events(await ask(env, SICK)))["text"] == env.model.answer


# (path, body (None: a GET), content type, status, what the message says)
BAD_REQUESTS = [
    ("/api/corrections?status=maybe", None, "", 400, "'status' must be one of"),
    ("/api/corrections?limit=0", None, "", 400, "'limit' must be between"),
    ("/api/corrections/abc", '{"action": "approve"}', "application/json", 400, "whole number"),
    ("/api/corrections/0", '{"action": "approve"}', "application/json", 400, "whole number"),
    ("/api/corrections/1", "action=approve", "application/x-www-form-urlencoded", 415, "Send JSON"),
    ("/api/corrections/1", "not json", "application/json", 400, "not valid JSON"),
    ("/api/corrections/1", '["approve"]', "application/json", 400, "JSON object"),
    ("/api/corrections/1", '{"action": "maybe"}', "application/json", 400, "approve or reject"),
    (
        "/api/corrections/1",
        '{"action": "reject", "text": "x"}',
        "application/json",
        400,
        "Only an approval",
    ),
    ("/api/corrections/1", '{"action": "approve", "text": " "}', "application/json", 400, "'text' must"),
    ("/api/corrections/1", '{"action": "approve", "text": 5}', "application/json", 400, "'text' must"),
    (
        "/api/corrections/1",
        '{"action": "approve", "updated_at": "x"}',
        "application/json",
        400,
        "updated_at",
    ),
    ("/api/corrections/999", '{"action": "approve"}', "application/json", 404, "no correction 999"),
]


async def test_bad_review_requests_are_4xx(env: SlackEnv) -> None:
    for path, body, content_type, status, says in BAD_REQUESTS:
        if body is None:
            response = await env.client.get(path, headers=ADMIN)
        else:
            headers = {**ADMIN, "Content-Type": content_type}
            response = await env.client.post(path, data=body, headers=headers)
        assert (response.status, says in await response.text()) == (status, True), (path, body)


async def test_the_review_api_is_for_admins_only(env: SlackEnv) -> None:
    await web_correction(env, "Twelve days.")
    async with env.runtime.service.answerer.kb.db.session() as s:
        [correction_id] = (await s.scalars(select(Correction.id))).all()
    post = f"/api/corrections/{correction_id}"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        assert (await env.client.get("/api/corrections", headers=headers)).status == 401
        assert (await env.client.post(post, json={"action": "approve"}, headers=headers)).status == 401
    # With the admin's credentials, a page on another site still cannot approve.
    cross = await env.client.post(
        post, json={"action": "approve"}, headers={**ADMIN, "Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status == 403
    stale = await env.client.post(
        post, json={"action": "approve", "updated_at": "2020-01-01T00:00:00+00:00"}, headers=ADMIN
    )
    assert stale.status == 409 and "reload the queue" in await stale.text()
    assert [c.status for c in await env.runtime.service.votes.corrections()] == ["pending"]


async def test_trust_mode_approves_corrections_on_arrival(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder, admin_token=TOKEN, corrections="trust") as env:
        await web_correction(env, "Up to 12 days of paid sick leave per year.")
        [stored] = await env.runtime.service.votes.corrections()
        assert stored.status == "approved"
        item = await env.runtime.service.review.item(stored.id)
        assert item is not None and item.reviewer == TRUST
        assert answer_of(await events(await ask(env, SICK)))["text"] == stored.text


async def test_a_source_deleted_since_is_shown_as_document_deleted(env: SlackEnv) -> None:
    await web_correction(env, "Twelve days of paid sick leave a year.")
    [before] = (await (await env.client.get("/api/corrections", headers=ADMIN)).json())["items"]
    [source] = [s for s in before["sources"] if s["cited"]]
    assert source["deleted"] is False
    kb = env.runtime.service.answerer.kb
    gone = await kb.delete([source["source"]], "handbook")
    assert gone[source["source"]] == [source["source"]]
    [after] = (await (await env.client.get("/api/corrections", headers=ADMIN)).json())["items"]
    [same] = [s for s in after["sources"] if s["cited"]]
    # The answer log keeps its chunk ids; they no longer lead to a document.
    assert (same["source"], same["deleted"]) == (source["source"], True)
