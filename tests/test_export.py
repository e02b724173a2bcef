"""Feedback export: each rule, the drops, determinism — on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from finetune.export import OVERRULED_RULE, UNSUPPORTED_UP, ExportOptions, export_feedback
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer, Correction

_clock = itertools.count()
# What the answers' prompts retrieved: every number the tests' answers and corrections state
# (export drops preferred texts that state a number their prompt does not hold).
HANDBOOK = (
    "Sick leave: ten days a year, 10 days of paid sick leave per year, 12 days after five years. "
    "Parental leave: 16 weeks. "
    "Vacation: 20 days. Meals: 45 euros a day. Hotels: 150 euros, 200 euros in capitals. "
    "Gym: 30 euros. Level 2 earns 70,000; level 3 earns 72,000. Questions 0 to 3."
)


def prompt(question: str, source: str = HANDBOOK) -> list[dict[str, str]]:
    """As agent.prompts.build_messages lays it out: the sources and the question last."""
    return [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": f'Sources:\n[1] hr.md: "{source}"\n\nQuestion: {question}'},
    ]


async def approve_all(db: Database) -> None:
    """A reviewer approved every correction as written (finetune.review): only those are trained on."""
    from sqlalchemy import update

    async with db.session() as s:
        await s.execute(
            update(Correction).values(status="approved", reviewer="U0", reviewed_at=datetime.now(UTC))
        )


async def answer(
    db: Database,
    question: str,
    text: str,
    *,
    thread: str = "",
    chunks: tuple[str, ...] = ("c1",),
    status: str = "ok",
    platform: str = "slack",
    restricted: bool | None = False,
    generated: str | None = None,
    grounding: dict[str, object] | None = None,
    source: str = HANDBOOK,
) -> str:
    answer_id = str(uuid.uuid4())
    async with db.session() as s:
        s.add(
            Answer(
                id=answer_id,
                created_at=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=next(_clock)),
                platform=platform,
                asker="U1",
                channel="C1",
                thread=thread or answer_id,
                collections=["hr"],
                question=question,
                search_query=question,
                messages=prompt(question, source),
                retrieved=[{"chunk_id": c, "score": 1.0, "source": "hr.md", "used": True} for c in chunks],
                answer=text,
                citations=[],
                status=status,
                base_model="m",
                latency_ms=1,
                restricted=restricted,
                generated=generated,
                grounding=grounding,
            )
        )
    return answer_id


def texts(rows: list[dict[str, object]]) -> set[tuple[str, str]]:
    return {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}  # type: ignore[index]


async def test_each_pair_rule_and_its_prompt(database: Database) -> None:
    votes = VoteLog(database)
    # Rule 1: a correction beats the answer it corrects.
    wrong = await answer(database, "How many sick days?", "Five days.")
    await votes.correct(answer_id=wrong, platform="slack", author="U2", text="Ten days [1].")
    # Rule 2: 👍 and 👎 answers to the same question (after normalising) in the same context.
    good = await answer(database, "How long is parental leave?", "16 weeks [1].")
    bad = await answer(database, "how long is  PARENTAL leave?", "I do not know.")
    await votes.vote(answer_id=good, platform="slack", voter="U2", value=1, origin="button")
    await votes.vote(answer_id=bad, platform="teams", voter="X3", value=-1, origin="feedback")
    # Rule 3: 👎, then a 👍 answer to the same question later in the same thread (other passages).
    first = await answer(database, "Meal allowance?", "No idea.", thread="T1", chunks=("c7",))
    again = await answer(database, "Meal allowance?", "45 euros a day [1].", thread="T1", chunks=("c8",))
    await votes.vote(answer_id=first, platform="slack", voter="U4", value=-1, origin="reaction")
    await votes.vote(answer_id=again, platform="slack", voter="U4", value=1, origin="reaction")
    await approve_all(database)

    result = await export_feedback(database, ExportOptions())
    assert texts(result.dpo) == {
        ("Ten days [1].", "Five days."),
        ("16 weeks [1].", "I do not know."),
        ("45 euros a day [1].", "No idea."),
    }
    by_chosen = {r["chosen"][0]["content"]: r for r in result.dpo}
    assert by_chosen["16 weeks [1]."]["prompt"] == prompt("How long is parental leave?")  # the 👍 one's
    assert by_chosen["45 euros a day [1]."]["prompt"] == prompt("Meal allowance?")
    assert result.made["correction"] == 1 and result.made["same question, opposite votes"] == 1
    assert result.made["regenerated in the thread"] == 1
    assert result.kto == []  # every rated answer is in a pair
    sft = {r["messages"][-1]["content"] for r in result.sft}
    assert sft == {"Ten days [1].", "16 weeks [1].", "45 euros a day [1]."}
    assert all(r["messages"][-1]["role"] == "assistant" for r in result.sft)


async def test_drops_caps_and_determinism(database: Database) -> None:
    votes = VoteLog(database)
    # Self-pair: the correction says exactly what the answer said.
    same = await answer(database, "VPN?", "Always use the VPN.")
    await votes.correct(answer_id=same, platform="slack", author="U2", text="Always use the VPN.")
    # Contradiction: two people corrected two identical answers in opposite directions.
    a = await answer(database, "Hotel limit?", "150 euros.")
    b = await answer(database, "Hotel limit?", "200 euros.")
    await votes.correct(answer_id=a, platform="slack", author="U2", text="200 euros.")
    await votes.correct(answer_id=b, platform="slack", author="U3", text="150 euros.")
    # Votes that cancel out; a vote on an answer made without the model; an evaluation answer.
    tied = await answer(database, "Gym?", "30 euros.")
    await votes.vote(answer_id=tied, platform="slack", voter="U5", value=1, origin="button")
    await votes.vote(answer_id=tied, platform="slack", voter="U6", value=-1, origin="button")
    unanswered = await answer(database, "Rocket?", "I could not find this.", status="not_found")
    await votes.vote(answer_id=unanswered, platform="slack", voter="U5", value=-1, origin="button")
    evaluated = await answer(database, "Eval?", "x", platform="eval")
    await votes.vote(answer_id=evaluated, platform="slack", voter="U5", value=1, origin="button")
    # One eager voter: only their first two votes count.
    for i in range(4):
        rated = await answer(database, f"Question {i}?", f"Answer {i}.")
        await votes.vote(answer_id=rated, platform="slack", voter="U9", value=1, origin="button")
    await approve_all(database)

    options = ExportOptions(max_votes_per_user=2)
    result = await export_feedback(database, options)
    assert result.dpo == []
    assert result.dropped["chosen and rejected are the same text"] == 1
    assert result.dropped["contradictory pair"] == 2
    assert result.dropped["answer whose votes cancel out or are too few"] == 1
    assert result.dropped["vote on an answer made without the model"] == 2
    assert result.dropped["vote beyond the per-person cap"] == 2
    assert sorted(r["completion"][0]["content"] for r in result.kto) == ["Answer 0.", "Answer 1."]
    assert all(r["label"] is True for r in result.kto)
    again = await export_feedback(database, options)
    assert (again.dpo, again.kto, again.sft) == (result.dpo, result.kto, result.sft)
    summary = result.summary()
    assert "contradictory pair: 2" in summary and "KTO rows: 2" in summary
    # --since: only feedback given after the date.
    later = await export_feedback(database, ExportOptions(since=datetime.now(UTC) + timedelta(days=1)))
    assert (later.dpo, later.kto, later.sft) == ([], [], [])


async def test_near_duplicate_questions_by_embedding(database: Database) -> None:
    votes = VoteLog(database)
    up = await answer(database, "How many days of annual leave do I get?", "20 days [1].")
    down = await answer(database, "How many annual leave days do I get?", "Ask HR.")
    await votes.vote(answer_id=up, platform="slack", voter="U1", value=1, origin="button")
    await votes.vote(answer_id=down, platform="slack", voter="U2", value=-1, origin="button")

    def embed(texts: list[str]) -> object:
        import numpy as np

        # Two wordings of one question: same direction; an unrelated one would be orthogonal.
        return np.array([[1.0, 0.1] if "annual" in t else [0.0, 1.0] for t in texts])

    assert (await export_feedback(database, ExportOptions())).dpo == []  # without embeddings: two questions
    paired = await export_feedback(database, ExportOptions(similarity=0.9), embed=embed)  # type: ignore[arg-type]
    assert texts(paired.dpo) == {("20 days [1].", "Ask HR.")}


async def test_question_vectors_from_the_answer_log_are_reused(database: Database) -> None:
    votes = VoteLog(database)
    up = await answer(database, "How many days of annual leave do I get?", "20 days [1].")
    down = await answer(database, "How many annual leave days do I get?", "Ask HR.")
    async with database.session() as s:
        for answer_id, vector in ((up, [1.0, 0.1]), (down, [0.98, 0.12])):
            row = await s.get(Answer, answer_id)
            assert row is not None
            row.question_vector, row.embedding_model = vector, "model-a"
    await votes.vote(answer_id=up, platform="slack", voter="U1", value=1, origin="button")
    await votes.vote(answer_id=down, platform="slack", voter="U2", value=-1, origin="button")

    def must_not_embed(texts: list[str]) -> object:
        raise AssertionError(f"embedded again: {texts}")

    result = await export_feedback(database, ExportOptions(), embed=must_not_embed, embed_model="model-a")  # type: ignore[arg-type]
    assert texts(result.dpo) == {("20 days [1].", "Ask HR.")}
    embedded: list[str] = []

    def other_model(batch: list[str]) -> object:
        import numpy as np

        embedded.extend(batch)
        return np.array([[1.0, 0.0]] * len(batch))

    await export_feedback(database, ExportOptions(), embed=other_model, embed_model="model-b")  # type: ignore[arg-type]
    assert len(embedded) == 2  # vectors of another model are not mixed in


async def test_answers_that_used_restricted_documents_are_never_exported(database: Database) -> None:
    """An adapter answers everyone: text only some may read must not be trained into it."""
    from sqlalchemy import update

    from kbot.db.models import Chunk, Collection, Document

    async with database.session() as s:
        s.add(Collection(name="hr", embedding_model="m", embedding_dim=2))
        for doc_id, acl in ((1, ["*"]), (2, ["hr"])):
            s.add(
                Document(
                    id=doc_id, collection="hr", source=f"d{doc_id}.md", title="t", content_hash="h",
                    ingest_key="k", acl=acl, size_bytes=1, chunk_count=1,
                )
            )  # fmt: skip
        await s.flush()
        s.add(Chunk(id="public", document_id=1, ordinal=0, heading="", token_count=1))
        s.add(Chunk(id="hr-only", document_id=2, ordinal=0, heading="", token_count=1))
    votes = VoteLog(database)

    async def rated(question: str, text: str, **kwargs: object) -> str:
        answer_id = await answer(database, question, text, **kwargs)  # type: ignore[arg-type]
        await votes.vote(answer_id=answer_id, platform="slack", voter="U2", value=1, origin="button")
        return answer_id

    marked = await rated("Salary bands?", "CANARY-1 level 2 earns 70,000 [1].", restricted=True)
    await votes.correct(answer_id=marked, platform="slack", author="U3", text="CANARY-2 it is 72,000.")
    await rated("Bonus?", "CANARY-3 bonus [1].", chunks=("hr-only",))  # ACL tightened since
    await rated("Old salary?", "CANARY-4 old [1].", chunks=("gone",), restricted=None)  # logged before
    await rated("Old leave?", "Ten days [1].", chunks=("public",), restricted=None)
    await rated("Leave?", "Twenty days [1].", chunks=("public",))
    found = await rated("Gym?", "30 euros [1].", chunks=("public", "hr-only"))
    async with database.session() as s:  # hr-only was found, but judged irrelevant: not in the prompt
        retrieved = [{"chunk_id": "public", "used": True}, {"chunk_id": "hr-only", "used": False}]
        await s.execute(update(Answer).where(Answer.id == found).values(retrieved=retrieved))
    await approve_all(database)

    result = await export_feedback(database, ExportOptions())
    rows = [*result.dpo, *result.kto, *result.sft]
    assert "CANARY" not in str(rows)
    assert {r["messages"][-1]["content"] for r in result.sft} == {
        "Ten days [1].",
        "Twenty days [1].",
        "30 euros [1].",
    }
    assert result.dropped["vote on an answer that used restricted documents"] == 3
    assert result.dropped["correction of an answer that used restricted documents"] == 1
    assert "restricted documents: 3" in result.summary()


def rejected(reason: str = "unsupported claim") -> dict[str, object]:
    """The grounding verdict of a draft the strict check replaced by a cited extractive answer."""
    return {"mode": "strict", "passed": False, "reasons": [reason], "fallback": "extractive"}


PASSED = {"mode": "strict", "passed": True, "reasons": [], "fallback": None}
QUOTE = 'According to *Leave policy* [1]: "Up to 10 days of paid sick leave per year."'
DRAFT = "You get unlimited sick leave."


async def test_extractive_answer_voted_good_beats_the_rejected_draft(database: Database) -> None:
    votes = VoteLog(database)
    shown = await answer(database, "Sick leave?", QUOTE, generated=DRAFT, grounding=rejected())
    await votes.vote(answer_id=shown, platform="slack", voter="U2", value=1, origin="button")
    # A draft that passed, voted 👍, and one logged before the check: as before, KTO and SFT rows.
    passed = await answer(database, "Gym?", "30 euros [1].", generated="30 euros [1].", grounding=PASSED)
    old = await answer(database, "Parking?", "Free [1].")
    for answer_id in (passed, old):
        await votes.vote(answer_id=answer_id, platform="slack", voter="U2", value=1, origin="button")

    result = await export_feedback(database, ExportOptions())
    assert texts(result.dpo) == {(QUOTE, DRAFT)}
    (row,) = result.dpo
    assert set(row) == {"prompt", "chosen", "rejected"}  # TRL's DPO format, nothing more
    assert row["prompt"] == prompt("Sick leave?")
    assert row["chosen"] == [{"role": "assistant", "content": QUOTE}]
    assert row["rejected"] == [{"role": "assistant", "content": DRAFT}]
    assert result.made["grounding"] == 1 and "made by grounding: 1" in result.summary()
    assert sorted(r["completion"][0]["content"] for r in result.kto) == ["30 euros [1].", "Free [1]."]
    assert {r["messages"][-1]["content"] for r in result.sft} == {QUOTE, "30 euros [1].", "Free [1]."}


async def test_a_rejected_draft_is_never_chosen(database: Database) -> None:
    votes = VoteLog(database)
    # 👎 on the extractive answer: no pair with the draft; the shown text is the rated one.
    down = await answer(database, "Sick leave?", QUOTE, generated=DRAFT, grounding=rejected())
    await votes.vote(answer_id=down, platform="slack", voter="U2", value=-1, origin="button")
    result = await export_feedback(database, ExportOptions())
    assert result.dpo == [] and "grounding" not in result.made
    assert [(r["completion"][0]["content"], r["label"]) for r in result.kto] == [(QUOTE, False)]
    # Beside a 👍 answer to the same question in the same context: the shown text is rejected.
    up = await answer(
        database, "sick  LEAVE?", "Ten days a year [1].", generated="Ten days a year [1].", grounding=PASSED
    )
    await votes.vote(answer_id=up, platform="slack", voter="U3", value=1, origin="button")
    result = await export_feedback(database, ExportOptions())
    assert texts(result.dpo) == {("Ten days a year [1].", QUOTE)}
    assert DRAFT not in str([*result.dpo, *result.kto, *result.sft])
    # A draft equal to the shown text, or votes that cancel out: no grounding pair either.
    same = await answer(database, "Dental?", "Covered [1].", generated=" Covered [1]. ", grounding=rejected())
    tied = await answer(database, "Bike?", QUOTE, generated="A bike a year.", grounding=rejected())
    await votes.vote(answer_id=same, platform="slack", voter="U2", value=1, origin="button")
    await votes.vote(answer_id=tied, platform="slack", voter="U2", value=1, origin="button")
    await votes.vote(answer_id=tied, platform="slack", voter="U3", value=-1, origin="button")
    assert "grounding" not in (await export_feedback(database, ExportOptions())).made


async def test_grounding_pairs_follow_the_export_rules(database: Database) -> None:
    votes = VoteLog(database)
    anonymous = await answer(
        database, "Sick leave?", QUOTE, generated=DRAFT, grounding=rejected(), platform="web"
    )
    await votes.vote(answer_id=anonymous, platform="web", voter="anon-1", value=1, origin="web")
    for kwargs in ({"restricted": True}, {"platform": "eval"}):
        secret = await answer(
            database, "Salary?", "CANARY-1 quote", generated="CANARY-2 draft", grounding=rejected(), **kwargs
        )  # type: ignore[arg-type]
        await votes.vote(answer_id=secret, platform="slack", voter="U2", value=1, origin="button")
    # The same pair twice (the same prompt, quote and draft): kept once.
    for voter in ("U4", "U5"):
        twin = await answer(database, "Vacation?", "20 days [1].", generated="Ask HR.", grounding=rejected())
        await votes.vote(answer_id=twin, platform="slack", voter=voter, value=1, origin="button")

    result = await export_feedback(database, ExportOptions())
    assert texts(result.dpo) == {("20 days [1].", "Ask HR.")}
    assert result.made["grounding"] == 1 and result.dropped["duplicate pair"] == 1
    assert "CANARY" not in str([*result.dpo, *result.kto, *result.sft])
    assert result.dropped["vote by an anonymous web visitor"] == 1
    assert result.dropped["vote on an answer that used restricted documents"] == 1
    assert result.dropped["vote on an answer made without the model"] == 1  # the evaluation run
    allowed = await export_feedback(database, ExportOptions(train_on_anonymous=True))
    assert texts(allowed.dpo) == {("20 days [1].", "Ask HR."), (QUOTE, DRAFT)}
    assert allowed.made["grounding"] == 2


async def test_a_preferred_text_must_hold_to_its_sources_numbers(database: Database) -> None:
    """Poisoned or mistaken feedback looks like the right sentence with one number changed: it
    must not teach the model to overrule its sources. Notation does not matter (ten = 10 = 十)."""
    votes = VoteLog(database)
    source = "Sick leave is 10 days a year. Parking is free."
    # 👍 on an answer whose number the sources do not hold: no chosen side, no KTO, no SFT row.
    made_up = await answer(database, "Sick leave?", "Fifteen days a year [1].", source=source)
    shy = await answer(database, "Sick leave?", "I do not know.", source=source)
    await votes.vote(answer_id=made_up, platform="slack", voter="U2", value=1, origin="button")
    await votes.vote(answer_id=shy, platform="slack", voter="U3", value=-1, origin="button")
    # The same fact in other notations is supported.
    english = await answer(database, "How much sick leave?", "Ten days a year [1].", source=source)
    chinese = await answer(database, "病假幾天？", "每年十天病假 [1]。", source=source)
    for liked in (english, chinese):
        await votes.vote(answer_id=liked, platform="slack", voter="U4", value=1, origin="button")
    # A correction that changes the number: served and trained as a verified answer, never a pair.
    poisoned = await answer(database, "Sick days per year?", "Ten days [1].", source=source)
    await votes.correct(answer_id=poisoned, platform="slack", author="U5", text="Twelve days a year.")
    await approve_all(database)

    result = await export_feedback(database, ExportOptions())
    taught = str([*result.dpo, *result.kto, *[r["messages"][-1] for r in result.sft]])
    assert "Fifteen" not in taught
    assert result.dropped[UNSUPPORTED_UP] == 1 and UNSUPPORTED_UP in result.summary()
    assert result.dpo == []  # no pair prefers a text that overrules its sources
    assert sorted(r["completion"][0]["content"] for r in result.kto) == [
        "I do not know.", "Ten days a year [1].", "每年十天病假 [1]。",
    ]  # fmt: skip
    (verified,) = [r["messages"] for r in result.sft if r["messages"][-1]["content"] == "Twelve days a year."]
    assert "verified answer" in verified[-2]["content"] and source not in verified[-2]["content"]
    assert result.made[OVERRULED_RULE] == 1
    assert {r["messages"][-1]["content"] for r in result.sft} == {
        "Ten days a year [1].", "每年十天病假 [1]。", "Twelve days a year.",
    }  # fmt: skip
