"""Load on one server, on SQLite and on PostgreSQL: 200 questions and 1,000 votes from Slack, Teams
and the web at once, duplicates included. Every question is answered exactly once; the vote
log ends exactly as the people left their votes. (Figures: bench/reliability.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge.embeddings import Embedder
from tests.load import Load
from tests.test_teams import teams_env

pytestmark = pytest.mark.slow
SLACK, TEAMS, WEB, VOTES = 80, 60, 60, 1000


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_questions_and_votes_under_load(
    tmp_path: Path, embedder: Embedder, store: str, request: pytest.FixtureRequest
) -> None:
    overrides: dict[str, object] = {
        "rate_limit_per_minute": 0,
        "max_concurrent_answers": 8,
        "model_timeout_s": 120,
    }
    if store == "postgres":
        overrides["database_url"] = request.getfixturevalue("own_postgres")
    async with teams_env(tmp_path, embedder, **overrides) as teams:
        load = Load(teams)
        await load.questions(SLACK, TEAMS, WEB)
        await load.settle()
        assert load.report.answered == SLACK + TEAMS + WEB
        assert await load.answers_per_platform() == {"slack": SLACK, "teams": TEAMS, "web": WEB}
        assert all(load.teams_replies(f"tq{n}") == 1 for n in range(TEAMS))

        await load.votes(VOTES)
        await load.settle()
        assert load.report.votes_sent == VOTES
        assert await load.converged() == load.report.expected
