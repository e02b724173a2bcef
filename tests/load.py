"""A concurrent load on one kbot server: questions and votes from Slack, Teams and the web at once.

Used by tests/test_load.py (correctness on SQLite and PostgreSQL) and bench/reliability.py
(figures). Questions come with the duplicates platforms really send (Slack retries and the
app_mention + message double delivery, a web page sending twice); votes come as sequences per
(answer, person) — changes, repeats, removals — all people at once, so the final vote log is
known exactly: the last word of every sequence.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field

from sqlalchemy import select

from kbot.db.models import Answer, AnswerMessage, Vote
from tests.fake_slack import BOT_USER, wait_until
from tests.fake_teams import activity
from tests.slack_env import mention
from tests.test_teams import TeamsEnv

QUESTION = "How many days of sick leave do I get?"
Final = set[tuple[str, str, int, str]]  # (answer id, voter, value, origin)


@dataclass
class Report:
    questions: int = 0  # distinct questions asked
    sent: int = 0  # requests sent for them, duplicates included
    answered: int = 0  # distinct questions with exactly one answer shown
    latencies_ms: list[float] = field(default_factory=list)
    votes_sent: int = 0
    expected: Final = field(default_factory=set)
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


class Load:
    def __init__(self, teams: TeamsEnv, *, seed: int = 7) -> None:
        self.t = teams
        self.env = teams.env
        self.rng = random.Random(seed)
        self.report = Report()
        self.web_cookies: dict[str, dict[str, str]] = {}  # web answer id -> its asker's cookies
        self.sent_at: dict[tuple[str, str], float] = {}  # (platform, where its answer shows) -> sent

    # --- questions ---------------------------------------------------------------------------
    # Every question is sent (with its duplicates) at once; when the server has handled them
    # all, one pass over what the fakes received checks "exactly once" and gives the latencies.

    async def slack_question(self, n: int) -> None:
        ts = f"17100{n:05d}.000100"
        event = mention(QUESTION, user=f"UQ{n}", channel="CLOAD", ts=ts)
        self.sent_at[("slack", ts)] = time.monotonic()
        sends = [self.env.event(event, event_id=f"EvQ{n}")]
        if n % 3 == 0:  # Slack retries the delivery
            sends.append(self.env.event(event, event_id=f"EvQ{n}", retry=1))
        if n % 4 == 0:  # and sends the same message again as a `message` event
            message = {**event, "type": "message", "channel_type": "channel"}
            sends.append(self.env.event(message, event_id=f"EvQ{n}m"))
        self.report.sent += len(sends)
        assert all(r.status == 200 for r in await asyncio.gather(*sends))

    async def teams_question(self, n: int) -> None:
        user = f"tq{n}"
        body = self.t.activity(
            text=QUESTION,
            **{"from": {"id": f"29:{user}", "name": user, "aadObjectId": user}},
            conversation={"conversationType": "personal", "tenantId": "t", "id": f"a:{user}-personal"},
        )
        self.sent_at[("teams", f"a:{user}-personal")] = time.monotonic()
        sends = [self.t.post(body)] + ([self.t.post(body)] if n % 3 == 0 else [])  # a redelivery
        self.report.sent += len(sends)
        assert all(r.status in (200, 201) for r in await asyncio.gather(*sends))

    async def web_question(self, n: int) -> None:
        body = {
            "id": f"load-{n:06d}-{uuid.uuid4().hex[:8]}",
            "conversation": uuid.uuid4().hex,
            "text": QUESTION,
        }
        started = time.monotonic()
        first = await self.env.client.post("/api/chat", json=body)
        cookies = {"kbot_visitor": first.cookies["kbot_visitor"].value}
        stream = await first.text()
        took = time.monotonic() - started
        self.report.sent += 1
        if n % 3 == 0:  # the page sent it twice
            self.report.sent += 1
            again = await (await self.env.client.post("/api/chat", json=body, cookies=cookies)).text()
            assert '"outcome": "duplicate"' in again
        answers = [
            json.loads(b.split("data: ", 1)[1]) for b in stream.split("\n\n") if b.startswith("event: answer")
        ]
        if len(answers) == 1 and answers[0]["status"] == "ok":
            self.web_cookies[answers[0]["answer_id"]] = cookies
            self.report.answered += 1
            self.report.latencies_ms.append(took * 1000)

    async def questions(self, slack: int, teams: int, web: int) -> None:
        self.report.questions = slack + teams + web
        await asyncio.gather(
            *(self.slack_question(n) for n in range(slack)),
            *(self.teams_question(n) for n in range(teams)),
            *(self.web_question(n) for n in range(web)),
        )
        await self.settle()
        self._count_chat_answers()

    def _count_chat_answers(self) -> None:
        """Slack and Teams: each question's final answer shown exactly once, and when."""
        placeholders: dict[str, str] = {}  # placeholder message ts -> question ts
        shown: dict[str, list[float]] = {}
        for call in self.env.slack.calls:
            params = call.params
            if call.method == "chat.postMessage" and params.get("_ts") and params.get("thread_ts"):
                placeholders[str(params["_ts"])] = str(params["thread_ts"])
            if call.method == "chat.startStream" and params.get("_ts"):
                placeholders[str(params["_ts"])] = str(params["thread_ts"])  # a streamed answer
            shows = ("chat.update", "chat.postMessage", "chat.stopStream")
            if call.method in shows and call.ok and "Sources" in json.dumps(params):
                question = placeholders.get(str(params.get("ts")), str(params.get("thread_ts", "")))
                shown.setdefault(question, []).append(call.at)
        for sent in self.t.connector.sent:
            if sent.activity.get("type") == "message":
                conversation = sent.path.split("/conversations/", 1)[1].split("/", 1)[0]
                shown.setdefault(conversation, []).append(sent.at)
        for (_platform, key), at in self.sent_at.items():
            times = shown.get(key, [])
            if len(times) == 1:
                self.report.answered += 1
                self.report.latencies_ms.append((times[0] - at) * 1000)

    def teams_replies(self, user: str) -> int:
        return sum(
            1
            for s in self.t.connector.sent
            if s.activity.get("type") == "message" and f"a:{user}-personal" in s.path
        )

    # --- votes -------------------------------------------------------------------------------

    async def _answers(self) -> dict[str, list[tuple[str, str, str]]]:
        """Per platform: (answer id, id of the message showing it, its chat) of every answer given."""
        async with self.env.runtime.service.answerer.kb.db.session() as s:
            rows = (
                await s.execute(
                    select(Answer.id, Answer.platform, AnswerMessage.message_id, AnswerMessage.channel).join(
                        AnswerMessage, AnswerMessage.answer_id == Answer.id
                    )
                )
            ).all()
        out: dict[str, list[tuple[str, str, str]]] = {}
        for answer_id, platform, message_id, channel in rows:
            out.setdefault(platform, []).append((answer_id, message_id, channel))
        return out

    async def votes(self, total: int) -> None:
        """``total`` votes in sequences per (answer, person), every sequence at once."""
        answers = await self._answers()
        web = list(self.web_cookies)
        self.rng.shuffle(web)
        runs: list[Awaitable[None]] = []
        budget = total
        while budget > 0:
            kind = self.rng.choice(["slack_button", "slack_reaction", "teams", "web"] if web else ["teams"])
            values = [self.rng.choice([1, -1]) for _ in range(min(budget, self.rng.randint(1, 4)))]
            take_back = self.rng.random() < 0.25
            if kind == "web":
                runs.append(self._web(web.pop(), values, take_back))
            elif kind == "slack_button":
                runs.append(
                    self._slack_buttons(*self.rng.choice(answers["slack"])[:2], f"UV{budget}", values)
                )
            elif kind == "slack_reaction":
                runs.append(
                    self._slack_reactions(
                        *self.rng.choice(answers["slack"])[:2], f"UR{budget}", values, take_back
                    )
                )
            else:
                runs.append(self._teams(*self.rng.choice(answers["teams"]), f"tv{budget}", values))
            budget -= len(values) + (take_back and kind in ("web", "slack_reaction"))
        self.report.votes_sent = total - budget
        await asyncio.gather(*runs)

    async def _web(self, answer_id: str, values: list[int], take_back: bool) -> None:
        cookies = self.web_cookies[answer_id]
        ops = [("vote", v) for v in values] + ([("unvote", values[-1])] if take_back else [])
        for kind, value in ops:
            body = {"answer_id": answer_id, "kind": kind, "value": value}
            response = await self.env.client.post("/api/feedback", json=body, cookies=cookies)
            # 202: the store was too busy and the vote waits on disk; the final state still counts it.
            assert response.status in (200, 202), await response.text()
        async with self.env.runtime.service.answerer.kb.db.session() as s:
            asker = str(await s.scalar(select(Answer.asker).where(Answer.id == answer_id)))
        if not take_back:
            self.report.expected.add((answer_id, asker, values[-1], "web"))

    async def _slack_buttons(self, answer_id: str, ts: str, user: str, values: list[int]) -> None:
        for value in values:
            action = {"action_id": "kbot_vote_up" if value > 0 else "kbot_vote_down", "value": answer_id}
            payload = {
                "type": "block_actions",
                "user": {"id": user},
                "channel": {"id": "CLOAD"},
                "container": {"type": "message", "channel_id": "CLOAD", "message_ts": ts},
                "message": {"ts": ts, "thread_ts": ts},
                "actions": [action],
                "trigger_id": "1.2",
            }
            assert (await self.env.interact(payload)).status == 200
        self.report.expected.add((answer_id, user, values[-1], "button"))

    async def _slack_reactions(
        self, answer_id: str, ts: str, user: str, values: list[int], take_back: bool
    ) -> None:
        shown = self.env.slack.reactions.setdefault(("CLOAD", ts), {})
        names = {1: "+1", -1: "-1"}
        current: int | None = None
        for step, value in enumerate([*values, *([0] if take_back else [])]):
            if current is not None:  # change or take back: the old reaction goes first
                shown.setdefault(names[current], []).remove(user)
                await self._reaction("reaction_removed", names[current], ts, user, f"{user}r{step}")
            if value:
                shown.setdefault(names[value], []).append(user)
                event_id = f"{user}a{step}"
                await self._reaction("reaction_added", names[value], ts, user, event_id)
                if step % 2:  # Slack retries this delivery
                    await self._reaction("reaction_added", names[value], ts, user, event_id, retry=1)
            current = value or None
        if current is not None:
            self.report.expected.add((answer_id, user, current, "reaction"))

    async def _reaction(
        self, kind: str, name: str, ts: str, user: str, event_id: str, retry: int = 0
    ) -> None:
        event = {
            "type": kind,
            "user": user,
            "reaction": name,
            "item_user": BOT_USER,
            "item": {"type": "message", "channel": "CLOAD", "ts": ts},
            "event_ts": "1710000000.000001",
        }
        assert (await self.env.event(event, event_id=event_id, retry=retry)).status == 200

    async def _teams(self, answer_id: str, message_id: str, chat: str, user: str, values: list[int]) -> None:
        for value in values:
            body = activity(
                self.t.connector.url,
                type="invoke",
                name="message/submitAction",
                replyToId=message_id,
                value={
                    "actionName": "feedback",
                    "actionValue": {"reaction": "like" if value > 0 else "dislike"},
                },
                conversation={"conversationType": "personal", "tenantId": "t", "id": chat},
                **{"from": {"id": f"29:{user}", "name": user, "aadObjectId": user}},
            )
            assert (await self.t.post(body)).status == 200
        self.report.expected.add((answer_id, user, values[-1], "feedback"))

    async def settle(self, timeout: float = 600) -> None:
        """Wait until every event the server acknowledged has been handled (answers, reactions)."""
        service = self.env.runtime.service
        await wait_until(lambda: not service._tasks, timeout=timeout)
        spool = service.spool
        await wait_until(lambda: spool is None or spool.pending == 0, timeout=timeout)

    async def converged(self, timeout: float = 300) -> Final:
        """The vote log once it shows the expected state (or what it shows at ``timeout``). Slack's
        buttons and reactions are handled after their ack, so the last ones land a little later."""
        deadline = time.monotonic() + timeout
        while (live := await self.live_votes()) != self.report.expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        return live

    async def live_votes(self) -> Final:
        async with self.env.runtime.service.answerer.kb.db.session() as s:
            return {(v.answer_id, v.voter, v.value, v.origin) for v in await s.scalars(select(Vote))}

    async def answers_per_platform(self) -> dict[str, int]:
        async with self.env.runtime.service.answerer.kb.db.session() as s:
            rows = (await s.execute(select(Answer.platform))).scalars().all()
        out: dict[str, int] = {}
        for platform in rows:
            out[platform] = out.get(platform, 0) + 1
        return out
