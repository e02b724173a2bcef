"""What an outside attacker tried against the web chat and the dashboard, each pinned down.

Free anonymous identities (drop the cookie, be someone new): rate-limited per client address too,
held to a fair share of answer slots, kept out of training. Questions are bounded in tokens, not
characters. Admin logins are throttled per address; sessions are random, expire and end at
logout. A lone surrogate is just a strange character.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from agent.answering import Answerer, AnswerResult
from agent.backends.openai import OpenAIBackend, estimated_first_tokens
from bot.conversation import IncomingMessage
from bot.ledger import ChatLedger
from bot.web.auth import SESSION_S, address_key
from finetune.export import ExportOptions, export_feedback, is_anonymous
from finetune.nightly import NightlyConfig, run_nightly
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer, Correction, InboundEvent
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.kbot_process import kbot
from tests.slack_env import SlackEnv, slack_env
from tests.test_export import answer as logged_answer
from tests.test_export import approve_all
from tests.test_web_api import answer_of, events

TOKEN = "admin-token-for-abuse-tests"
PASSWORD = "admin-password-for-abuse-tests"
QUESTION = "How many days of sick leave do I get?"
LIMITED = "You're asking faster than I can keep up (at most {limit} questions a minute)."
ATTACKER, OTHER = "203.0.113.5", "198.51.100.7"


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    """kbot reached directly: X-Forwarded-For is nobody's word."""
    async with slack_env(tmp_path, embedder, admin_token=TOKEN) as e:
        yield e


@pytest.fixture
async def proxied(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    """kbot behind two trusted proxies (the test client's address and a 10/8 one)."""
    async with slack_env(
        tmp_path,
        embedder,
        admin_token=TOKEN,
        admin_password=PASSWORD,
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
        rate_limit_per_minute=3,
    ) as e:
        yield e


@asynccontextmanager
async def browser(env: SlackEnv) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies: every request is cookie-less unless it passes some."""
    base = str(env.client.make_url("/"))
    async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def _id() -> str:
    return uuid.uuid4().hex


async def ask(
    session: aiohttp.ClientSession,
    text: str = QUESTION,
    *,
    forwarded: str | None = None,
    cookie: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    cookies = {"kbot_visitor": cookie} if cookie else {}
    body = {"id": _id(), "conversation": _id(), "text": text}
    async with session.post("/api/chat", json=body, headers=headers, cookies=cookies) as response:
        return await events(response)  # type: ignore[arg-type]


def outcome(stream: list[tuple[str, dict[str, Any]]]) -> str:
    return str(stream[-1][1]["outcome"])


def notices(stream: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [data["text"] for event, data in stream if event == "notice"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- anonymous identities are not free -------------------------------------------------------


async def test_cookieless_questions_from_one_address_are_rate_limited(env: SlackEnv) -> None:
    async with browser(env) as session:
        # Twelve new "visitors" (no cookie each time), each claiming another forwarded address:
        # kbot is reached directly here, so X-Forwarded-For is ignored and the address is one.
        streams = [await ask(session, forwarded=f"192.0.2.{i}") for i in range(12)]
    assert [outcome(s) for s in streams] == ["answered"] * 10 + ["rate_limited"] * 2
    for stream in streams[10:]:
        [notice] = notices(stream)
        assert notice.startswith(LIMITED.format(limit=10))
    async with env.runtime.service.answerer.kb.db.session() as s:
        askers = set(await s.scalars(select(Answer.asker)))
        actors = set(await s.scalars(select(InboundEvent.actor)))
    assert len(askers) == 10  # ten different cookies were answered: the address held them back
    assert address_key("127.0.0.1") in actors
    assert not any("127.0.0.1" in a or "192.0.2." in a for a in actors)  # hashed, never the address


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(proxied: SlackEnv) -> None:
    async with browser(proxied) as session:
        first = [await ask(session, forwarded=ATTACKER) for _ in range(2)]
        # Through a second trusted proxy, and with an entry the client made up in front: the
        # right-most address no trusted proxy owns is still the attacker's.
        third = await ask(session, forwarded=f"{ATTACKER}, 10.1.2.3")
        spoofed = await ask(session, forwarded=f"{OTHER}, {ATTACKER}")
        other = await ask(session, forwarded=OTHER)
    assert [outcome(s) for s in [*first, third]] == ["answered"] * 3
    assert outcome(spoofed) == "rate_limited"
    assert notices(spoofed)[0].startswith(LIMITED.format(limit=3))
    assert outcome(other) == "answered"  # another client behind the same proxy


async def test_the_address_count_is_exact_under_concurrency(sql_url: str, database: Database) -> None:
    replicas = [Database(sql_url) for _ in range(3)]
    try:
        ledgers = [ChatLedger(db) for db in replicas]
        address = address_key(ATTACKER)
        claims = await asyncio.gather(
            *(
                ledgers[i % 3].claim_question(
                    f"web:q{i}",
                    platform="web",
                    actor=f"anon-{i:020d}",  # nine cookies, one address
                    window=timedelta(minutes=1),
                    limit=5,
                    also=(address,),
                )
                for i in range(9)
            )
        )
        assert sorted(claims) == ["accepted"] * 5 + ["limited"] * 4
        # Another address is not held back by this one's count.
        elsewhere = await ledgers[0].claim_question(
            "web:q-other",
            platform="web",
            actor="anon-" + "9" * 20,
            window=timedelta(minutes=1),
            limit=5,
            also=(address_key(OTHER),),
        )
        assert elsewhere == "accepted"
    finally:
        for db in replicas:
            await db.close()


async def test_one_address_cannot_hold_every_answer_slot(tmp_path: Path, embedder: Embedder) -> None:
    """Four slots; four slow questions from one address (four cookies) take at most two."""
    async with slack_env(tmp_path, embedder, trusted_proxies=["127.0.0.1"], max_concurrent_answers=4) as env:
        env.model.delay_s = 2.0
        async with browser(env) as session:
            attack = [
                asyncio.create_task(ask(session, forwarded=ATTACKER, cookie=secrets.token_urlsafe(24)))
                for _ in range(4)
            ]
            await wait_until(lambda: len(env.model.requests) >= 2, timeout=10)
            await asyncio.sleep(0.5)
            assert len(env.model.requests) == 2  # the other two wait for the attacker's own turn
            someone = asyncio.create_task(ask(session, forwarded=OTHER))
            await wait_until(lambda: len(env.model.requests) == 3, timeout=1.0)  # a slot at once
            streams = await asyncio.gather(*attack, someone)
    assert all(answer_of(s)["status"] == "ok" for s in streams)  # waiting, not refused


# --- questions are bounded in tokens ----------------------------------------------------------


def test_the_estimate_counts_cjk_characters_as_tokens() -> None:
    chinese = "请假" * 300  # 600 characters: under the character cap, ~600 tokens
    assert estimated_first_tokens(chinese, 512) == chinese[:512]
    english = "sick leave " * 300  # 3,300 ASCII characters: ~825 tokens at 4 characters each
    assert estimated_first_tokens(english, 512) == english[: 512 * 4]
    mixed = "ab" * 4 + "假" * 10  # 2 + 10 tokens
    assert estimated_first_tokens(mixed, 5) == "ab" * 4 + "假" * 3
    assert estimated_first_tokens(QUESTION, 512) is QUESTION  # fits: unchanged


async def test_a_question_is_cut_to_its_tokens_with_one_notice(env: SlackEnv) -> None:
    chinese = "请假规定是什么" * 100  # 700 characters: the character cap never saw it
    async with browser(env) as session:
        cut = await ask(session, chinese)
        long = await ask(session, "sick leave " * 1000)  # over both caps: one notice, the tokens'
    assert notices(cut) == ["Your question was cut to its first 512 tokens."]
    assert notices(long) == ["Your question was cut to its first 512 tokens."]
    assert answer_of(cut) and answer_of(long)
    async with env.runtime.service.answerer.kb.db.session() as s:
        questions = set(await s.scalars(select(Answer.question)))
    assert questions == {chinese[:512], ("sick leave " * 1000)[:2048].strip()}


class Recorded:
    """A Reply that keeps what it was given."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.results: list[AnswerResult] = []
        self.statuses: list[list[str]] = []

    async def working(self) -> None:
        pass

    async def status(self, lines: list[str]) -> None:
        self.statuses.append(lines)

    async def update(self, text: str) -> None:
        pass

    async def finish(self, result: AnswerResult) -> list[str]:
        self.results.append(result)
        return [result.answer_id]

    async def notice(self, text: str, *, private: bool = False) -> None:
        self.notices.append(text)


def direct(text: str, user: str = "U42") -> IncomingMessage:
    return IncomingMessage(
        platform="slack", key=f"slack:{_id()}", user=user, channel="D1", thread="", text=text, addressed=True
    )


async def test_chat_service_cuts_by_the_backends_count(
    env: SlackEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every platform goes through ChatService, which counts with the model backend's tokens."""
    asked: list[tuple[str, int]] = []

    async def one_token_per_word(text: str, limit: int) -> str:
        asked.append((text, limit))
        return " ".join(text.split()[:limit])

    monkeypatch.setattr(env.runtime.service.answerer.backend, "first_tokens", one_token_per_word)
    reply = Recorded()
    question = "sick leave " * 600  # 6,600 characters: ChatService itself has no character cap
    assert await env.runtime.service.handle(direct(question), reply) == "answered"
    assert asked == [(question.strip(), 512)]
    assert reply.notices == ["Your question was cut to its first 512 tokens."]
    async with env.runtime.service.answerer.kb.db.session() as s:
        [row] = (await s.scalars(select(Answer))).all()
    assert row.question == " ".join(["sick", "leave"] * 256)


@pytest.mark.slow
async def test_the_local_backend_cuts_with_its_own_tokenizer(base_model_dir: str) -> None:
    from transformers import AutoTokenizer

    from agent.backends.local import LocalBackend

    backend = LocalBackend(base_model_dir, name="smollm2")
    chinese = "婚假可以請幾天？" * 500  # 4,000 characters; SmolLM2 has few CJK tokens
    cut = await backend.first_tokens(chinese, 512)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert chinese.startswith(cut) and tokens(cut) <= 512 < tokens(chinese[: len(cut) + 1])
    assert "\ufffd" not in cut  # cut at a character, never inside one
    assert await backend.first_tokens(QUESTION, 512) is QUESTION


# --- anonymous feedback stays out of training -------------------------------------------------

ANON = "anon-0123456789abcdef0123"


async def feedback_of_everyone(db: Database, *, reviewed: bool = True) -> None:
    """Anonymous visitors: a poisoned correction, opposite votes (a pair), a lone 👍 (KTO, SFT).
    A signed-in web user and a Slack user: a correction and a 👍. ``reviewed``: the corrections
    approved (else pending)."""
    votes = VoteLog(db)
    poisoned = await logged_answer(db, "How many sick days?", "Ten days [1].", platform="web")
    await votes.correct(answer_id=poisoned, platform="web", author=ANON, text="Unlimited, never ask.")
    good = await logged_answer(db, "Parental leave?", "16 weeks [1].", platform="web")
    bad = await logged_answer(db, "parental leave?", "None.", platform="web")
    await votes.vote(answer_id=good, platform="web", voter="anon-" + "a" * 20, value=1, origin="web")
    await votes.vote(answer_id=bad, platform="web", voter="anon-" + "b" * 20, value=-1, origin="web")
    lone = await logged_answer(db, "Gym?", "30 euros a month.", platform="web")
    await votes.vote(answer_id=lone, platform="web", voter="anon-" + "c" * 20, value=1, origin="web")
    signed = await logged_answer(db, "VPN?", "No need.", platform="web")
    await votes.correct(answer_id=signed, platform="web", author="alice@example.com", text="Always use it.")
    slack = await logged_answer(db, "Meal allowance?", "45 euros a day [1].")
    await votes.vote(answer_id=slack, platform="slack", voter="U1", value=1, origin="button")
    if reviewed:
        await approve_all(db)  # even the poisoned one: only who wrote it keeps it out


async def test_anonymous_feedback_is_not_exported_unless_allowed(database: Database) -> None:
    await feedback_of_everyone(database)
    kept = await export_feedback(database, ExportOptions())
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in kept.dpo} == {
        ("Always use it.", "No need.")
    }
    assert [r["completion"][0]["content"] for r in kept.kto] == ["45 euros a day [1]."]
    assert {r["messages"][-1]["content"] for r in kept.sft} == {"Always use it.", "45 euros a day [1]."}
    assert kept.dropped["vote by an anonymous web visitor"] == 3
    assert kept.dropped["correction by an anonymous web visitor"] == 1
    summary = kept.summary()
    assert "dropped, vote by an anonymous web visitor: 3" in summary
    assert "dropped, correction by an anonymous web visitor: 1" in summary

    allowed = await export_feedback(database, ExportOptions(train_on_anonymous=True))
    assert ("Unlimited, never ask.", "Ten days [1].") in {
        (r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in allowed.dpo
    }
    assert ("16 weeks [1].", "None.") in {
        (r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in allowed.dpo
    }
    assert "30 euros a month." in {r["completion"][0]["content"] for r in allowed.kto}
    assert "Unlimited, never ask." in {r["messages"][-1]["content"] for r in allowed.sft}
    assert not any("anonymous" in reason for reason in allowed.dropped)
    # Only the web chat makes anonymous ids: the same text elsewhere is somebody's id.
    assert is_anonymous("web", ANON) and not is_anonymous("slack", ANON)


def test_kbot_feedback_export_reads_the_setting(tmp_path: Path) -> None:
    """`kbot feedback export --format sft`: the poisoned correction is not a training row until
    KBOT_TRAIN_ON_ANONYMOUS says so."""
    data = tmp_path / "state"

    async def fill() -> None:
        db = Database(f"sqlite+aiosqlite:///{data / 'kbot.db'}")
        await db.migrate()
        await feedback_of_everyone(db)
        await db.close()

    data.mkdir()
    asyncio.run(fill())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env |= {"KBOT_DATA_DIR": str(data), "PYTHONPATH": str(Path.cwd())}
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    for flag in ("false", "true"):
        runs[flag] = kbot(
            "feedback",
            "export",
            "--format",
            "sft",
            cwd=tmp_path,
            env={**env, "KBOT_TRAIN_ON_ANONYMOUS": flag},
        )
        assert runs[flag].returncode == 0, runs[flag].stderr
    rows = {flag: [json.loads(line) for line in run.stdout.splitlines()] for flag, run in runs.items()}
    assert "Unlimited, never ask." not in json.dumps(rows["false"], ensure_ascii=False)
    assert "Unlimited, never ask." in json.dumps(rows["true"], ensure_ascii=False)
    assert "dropped, correction by an anonymous web visitor: 1" in runs["false"].stderr
    assert "anonymous" not in runs["true"].stderr


async def test_the_nightly_run_reads_the_setting(settings: Settings, kb: KnowledgeBase) -> None:
    await feedback_of_everyone(kb.db, reviewed=False)  # an approved correction would be trained on
    unused = OpenAIBackend("http://127.0.0.1:9/v1", model="unused")  # too little feedback to train
    counts = {}
    for allowed in (False, True):
        answerer = await Answerer.open(
            settings.model_copy(update={"train_on_anonymous": allowed}), kb=kb, backend=unused
        )
        run = await run_nightly(answerer.settings, answerer, NightlyConfig())
        await answerer.close()
        assert run.status == "skipped"
        counts[allowed] = run.counts
    await unused.close()
    assert counts[False]["dropped"]["correction by an anonymous web visitor"] == 1
    assert counts[False]["dropped"]["correction awaiting review"] == 1  # the signed-in one
    assert counts[False]["pairs"] == 0
    assert "correction by an anonymous web visitor" not in counts[True]["dropped"]
    assert counts[True]["pairs"] > counts[False]["pairs"]


async def test_the_dashboard_shows_anonymous_feedback(env: SlackEnv) -> None:
    cookie = secrets.token_urlsafe(24)
    async with browser(env) as session:
        answer_id = answer_of(await ask(session, cookie=cookie))["answer_id"]
        for body in ({"kind": "vote", "value": -1}, {"kind": "correction", "text": "Twenty days."}):
            sent = await session.post(
                "/api/feedback", json={"answer_id": answer_id, **body}, cookies={"kbot_visitor": cookie}
            )
            assert sent.status == 200
        # Somebody known votes on it too (as a Slack reaction on a shared answer would).
        await VoteLog(env.runtime.service.answerer.kb.db).vote(
            answer_id=answer_id, platform="slack", voter="U1", value=1, origin="reaction"
        )
        response = await session.get("/api/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
        page = await (await session.get("/dashboard")).text()
    data = await response.json()
    assert data["anonymous"] == {
        "votes": 2,
        "anonymous_votes": 1,
        "corrections": 1,
        "anonymous_corrections": 1,
        "share": round(2 / 3, 4),
    }
    assert 'id="anonymous-note"' in page


# --- admin logins -----------------------------------------------------------------------------


async def test_failed_admin_logins_are_throttled_per_address(proxied: SlackEnv) -> None:
    guesser = {"X-Forwarded-For": ATTACKER}
    guesses = [
        ("/api/dashboard", {"Authorization": "Bearer guess-1"}),
        ("/login?token=guess-2", {}),
        ("/api/dashboard", basic("admin", "guess-3")),
        ("/login?token=guess-4", {}),
        ("/api/dashboard", {"Authorization": "Bearer guess-5"}),
    ]
    async with browser(proxied) as session:
        for path, headers in guesses:
            refused = await session.get(path, headers={**guesser, **headers}, allow_redirects=False)
            assert refused.status == 401, path
        # Now even the right token is refused from there: a guesser learns nothing more.
        for path, headers in (
            ("/api/dashboard", {"Authorization": f"Bearer {TOKEN}"}),
            (f"/login?token={TOKEN}", {}),
            ("/api/dashboard", basic("admin", PASSWORD)),
        ):
            blocked = await session.get(path, headers={**guesser, **headers}, allow_redirects=False)
            assert blocked.status == 429, path
            assert 1 <= int(blocked.headers["Retry-After"]) <= 300
        other = {"X-Forwarded-For": OTHER}
        login = await session.get(f"/login?token={TOKEN}", headers=other, allow_redirects=False)
        assert login.status == 302  # another address signs in as ever
        assert (
            await session.get("/api/dashboard", headers={**other, **basic("admin", PASSWORD)})
        ).status == 200
        # A session already open keeps working from the blocked address (it is no guess).
        cookies = {"kbot_admin": login.cookies["kbot_admin"].value}
        assert (await session.get("/api/dashboard", headers=guesser, cookies=cookies)).status == 200
        proxied.runtime.admin.throttle.clock = lambda: time.monotonic() + 301
        after = await session.get("/api/dashboard", headers={**guesser, "Authorization": f"Bearer {TOKEN}"})
        assert after.status == 200  # the block ends


async def test_admin_sessions_are_new_expire_and_end_at_logout(env: SlackEnv) -> None:
    async with browser(env) as session:
        logins = [await session.get(f"/login?token={TOKEN}", allow_redirects=False) for _ in range(2)]
        first, second = (r.cookies["kbot_admin"] for r in logins)
        assert first.value != second.value and TOKEN not in first.value
        assert first["max-age"] == str(SESSION_S) and first["httponly"]

        async def opens(value: str) -> bool:
            response = await session.get("/api/dashboard", cookies={"kbot_admin": value})
            return response.status == 200

        assert await opens(first.value) and await opens(second.value)
        out = await session.post("/logout", cookies={"kbot_admin": first.value}, allow_redirects=False)
        assert out.status == 303 and out.headers["Location"] == "/dashboard"
        assert out.cookies["kbot_admin"].value == "" and out.cookies["kbot_admin"]["max-age"] == "0"
        assert not await opens(first.value)  # logged out: the id is gone from the server
        assert await opens(second.value)  # the other session is its own
        env.runtime.admin.clock = lambda: time.monotonic() + SESSION_S + 1
        assert not await opens(second.value)  # expired
        page = await (await session.get("/dashboard")).text()
    assert 'action="/logout"' in page and 'method="post"' in page


# --- lone surrogates ----------------------------------------------------------------------------


async def test_a_lone_surrogate_is_answered_normally(env: SlackEnv) -> None:
    cookie = secrets.token_urlsafe(24)
    # Raw JSON: "\ud800" is valid JSON, and Python's json turns it into a lone surrogate.
    lone = "LONE-SURROGATE"
    body = json.dumps({"id": _id(), "conversation": _id(), "text": f"{QUESTION} {lone}"}).replace(
        lone, "\\ud800"
    )
    headers = {"Content-Type": "application/json"}
    async with browser(env) as session:
        response = await session.post(
            "/api/chat", data=body, headers=headers, cookies={"kbot_visitor": cookie}
        )
        stream = await events(response)  # type: ignore[arg-type]
        answer_id = answer_of(stream)["answer_id"]
        text = json.dumps({"answer_id": answer_id, "kind": "correction", "text": f"Ten days {lone} a year."})
        correction = text.replace(lone, "\\udfff")
        saved = await session.post(
            "/api/feedback", data=correction, headers=headers, cookies={"kbot_visitor": cookie}
        )
        assert saved.status == 200, await saved.text()
    assert answer_of(stream)["status"] == "ok" and notices(stream) == []
    reply = Recorded()
    assert await env.runtime.service.handle(direct(f"\ud800{QUESTION}\udfff"), reply) == "answered"
    assert [r.status for r in reply.results] == ["ok"] and reply.notices == []
    assert env.stats["failed"] == 0
    async with env.runtime.service.answerer.kb.db.session() as s:
        questions = set(await s.scalars(select(Answer.question)))
        corrections = list(await s.scalars(select(Correction.text)))
    assert questions == {f"{QUESTION} \ufffd", f"\ufffd{QUESTION}\ufffd"}
    assert corrections == ["Ten days \ufffd a year."]
