"""The evaluation gate's rules, the night's plan and the golden set, without a model: a candidate
must beat the active adapter on the golden facts; length is not a veto; refusals are read in
English and Chinese; the plan follows the night's data; harmful nights are quarantined."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from finetune.evaluate import NO_GOLDEN, GateConfig, Metrics, Report, gate, refuses, states
from finetune.export import Export
from finetune.golden import add, facts_in, from_corrections, read_rows
from finetune.plan import plan_night, row_key
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer, Correction, utcnow
from kbot.errors import ConfigError


def scores(facts: float, **others: float) -> Metrics:
    return Metrics(
        fact_hit_rate=facts,
        grounded_pass_rate=others.get("passed", 0.5),
        refusal_rate=others.get("refusal", 0.1),
        degenerate_rate=others.get("degenerate", 0.0),
        mean_length=others.get("length", 40.0),
        heldout_accuracy=others.get("heldout"),
    )


def test_an_equal_candidate_is_refused_and_a_better_one_passes() -> None:
    config = GateConfig()
    assert gate(scores(0.5), scores(0.5), config) == ["fact_hit_rate 0.500 does not beat 0.500"]
    assert gate(scores(0.55), scores(0.5), config) == []
    assert gate(scores(0.6), scores(0.5), GateConfig(min_gain=0.1)) != []  # must gain more than 0.1


def test_shorter_answers_that_state_more_facts_pass() -> None:
    # The case that used to be refused for "mean answer length changed 0.49×".
    assert (
        gate(scores(0.64, length=22.0, heldout=1.0), scores(0.45, length=45.0, heldout=0.5), GateConfig())
        == []
    )


def test_better_facts_do_not_excuse_a_regression_elsewhere() -> None:
    reasons = gate(scores(0.9, passed=0.2, degenerate=0.1), scores(0.5, passed=0.5), GateConfig())
    assert any(r.startswith("grounded_pass_rate") for r in reasons)
    assert any(r.startswith("degenerate_rate") for r in reasons)
    report = Report("new", "old", {}, False, reasons)
    assert report.harmful


def test_worse_facts_are_harmful_not_merely_unproven() -> None:
    reasons = gate(scores(0.3), scores(0.5), GateConfig())
    assert reasons == ["fact_hit_rate 0.300 is worse than 0.500"]
    assert Report("new", "old", {}, False, reasons).harmful
    assert not Report("new", "old", {}, False, ["fact_hit_rate 0.5 does not beat 0.5"]).harmful


def test_without_golden_questions_nothing_passes() -> None:
    reasons = gate(Metrics(preference_accuracy=1.0), Metrics(preference_accuracy=0.5), GateConfig())
    assert reasons == [NO_GOLDEN]
    assert not Report("new", "old", {}, False, reasons).harmful


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("I could not find this in the documents available to you.", True),
        ("The documents do not say; I don't know.", True),
        ("This is not mentioned in the documents.", True),
        ("我在你可查閱的文件中找不到這個問題的答案。", True),
        ("文件中沒有提到這點。", True),
        ("我在你可查阅的文件中找不到这个问题的答案。", True),
        ("You get 25 vacation days.", False),
        ("員工每年有二十五天特休。", False),
    ],
)
def test_refusals_in_english_and_chinese(text: str, refusal: bool) -> None:
    assert refuses(text) is refusal


def test_a_quantity_fact_counts_in_any_notation() -> None:
    assert states("10 days", "You get ten days of leave.")
    assert states("10天", "可以請十天。")
    assert not states("10 days", "You get 10 weeks.")
    assert states("Workday", "approve it in workday")


def _pair(question: str, chosen: str, rejected: str) -> dict[str, Any]:
    prompt = [{"role": "user", "content": f"Sources:\n[1] x\n\nQuestion: {question}"}]
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _kto(question: str, text: str, label: bool) -> dict[str, Any]:
    prompt = [{"role": "user", "content": f"Question: {question}"}]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": text}], "label": label}


def test_the_plan_follows_what_the_night_holds() -> None:
    pairs = Export(dpo=[_pair(f"q{i}", f"good {i}", f"bad {i}") for i in range(12)])
    assert plan_night(pairs, None, holdout=0.2, replay=0.5, min_pairs=5).steps == ["dpo"]
    votes = Export(kto=[_kto(f"q{i}", f"a {i}", i % 3 == 0) for i in range(12)])
    night = plan_night(votes, None, holdout=0.2, replay=0.5, min_pairs=5)
    assert night.steps == ["kto"] and "KTO on 12 unpaired votes" in night.why
    one_sided = Export(kto=[_kto(f"q{i}", f"a {i}", True) for i in range(12)])
    assert plan_night(one_sided, None, holdout=0.2, replay=0.5, min_pairs=5).steps == []
    corrected = Export(
        sft=[
            {"messages": [{"role": "user", "content": "Question: q"}, {"role": "assistant", "content": "a"}]}
        ],
        made=Counter({"correction": 1}),
    )
    night = plan_night(corrected, None, holdout=0.2, replay=0.5, min_pairs=5)
    assert night.steps == ["sft"] and "approved correction" in night.why
    nothing = plan_night(Export(), None, holdout=0.2, replay=0.5, min_pairs=5)
    assert nothing.steps == [] and nothing.why.startswith("too little feedback: 0 pairs")


def test_replay_samples_older_rows_and_quarantine_keeps_rows_out() -> None:
    old = [_pair(f"old{i}", f"old good {i}", f"old bad {i}") for i in range(20)]
    new = [_pair(f"new{i}", f"new good {i}", f"new bad {i}") for i in range(10)]
    night = plan_night(Export(dpo=new), Export(dpo=old + new), holdout=0.01, replay=0.5, min_pairs=5)
    assert night.counts["dpo_replay"] == round(0.5 * night.counts["dpo_new"]) > 0
    assert sorted(night.new_keys) == sorted(row_key(r) for r in new)
    poisoned = frozenset(row_key(r) for r in new[:4])
    night = plan_night(Export(dpo=new), None, holdout=0.01, replay=0.5, min_pairs=5, quarantined=poisoned)
    assert all(row_key(r) not in poisoned for r in night.dpo)
    assert night.counts["dpo_new"] == 6


def test_golden_add_refuses_half_questions_and_keeps_one_of_each(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    assert add(path, "How many vacation days?", ["hr"], ["25 days"])
    assert not add(path, "  how many VACATION days? ", ["hr"], ["25 days"])  # the same question
    with pytest.raises(ConfigError, match="at least one fact"):
        add(path, "Where is the office?", ["hr"], [])
    with pytest.raises(ConfigError, match="collection"):
        add(path, "Where is the office?", [], ["Taipei"])
    assert read_rows(path) == [
        {"question": "How many vacation days?", "collections": ["hr"], "facts": ["25 days"]}
    ]
    assert facts_in("You get 25 days, or 30 days after five years; NT$3,000 for glasses.") == [
        "25 days",
        "30 days",
        "five years",
        "NT$3,000",
    ]


async def test_golden_from_approved_corrections_only(database: Database, tmp_path: Path) -> None:
    votes = VoteLog(database)
    for n, (question, text) in enumerate(
        [
            ("How long is parental leave?", "Parental leave is 16 weeks."),
            ("Who signs?", "Your manager signs."),
        ]
    ):
        answer_id = str(uuid.uuid4())
        async with database.session() as s:
            s.add(
                Answer(id=answer_id, platform="slack", asker="U1", collections=["hr"], question=question,
                       search_query=question, messages=[], retrieved=[], answer="?", citations=[],
                       status="ok", base_model="m", latency_ms=1)
            )  # fmt: skip
        await votes.correct(answer_id=answer_id, platform="slack", author=f"U{n}", text=text)
    await votes.correct(answer_id=answer_id, platform="slack", author="U9", text="It takes 3 days.")
    async with database.session() as s:
        await s.execute(
            update(Correction)
            .where(Correction.author != "U9")
            .values(status="approved", reviewed_at=utcnow())
        )
    path = tmp_path / "golden.jsonl"
    outcome = await from_corrections(database, path)
    assert (outcome.added, outcome.known, outcome.without_facts) == (1, 0, 1)  # the pending one is not read
    assert [json.loads(line)["facts"] for line in path.read_text().splitlines()] == [["16 weeks"]]
    again = await from_corrections(database, path)
    assert (again.added, again.known) == (0, 1)
