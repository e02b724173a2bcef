"""The `kbot` command as users and scripts run it: a real process, embedded defaults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.kbot_process import KBOT, free_port, kbot, wait_healthy


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder with the example handbook ingested once through the CLI."""
    cwd = tmp_path_factory.mktemp("cli")
    shutil.copytree(EXAMPLES, cwd / "handbook")
    (cwd / "handbook" / "notes.xyz").write_text("not a supported type")
    # Sphinx sources' table of contents (Python's docs ship three): read fine, nothing to index.
    (cwd / "handbook" / "contents.rst.txt").write_text(".. toctree::\n   :maxdepth: 2\n\n   leave-policy\n")
    env = {**os.environ, "KBOT_DATA_DIR": str(cwd / "state"), "PYTHONPATH": str(Path.cwd())}
    env.pop("KBOT_DATABASE_URL", None)
    env.pop("KBOT_QDRANT_URL", None)
    result = kbot("ingest", "handbook", "--collection", "hr", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hr: 4 added, 0 updated, 0 unchanged, 0 deleted, 0 failed;")
    assert "skipped 1 files of unsupported types" in result.stderr
    assert "skipped (no text): handbook/contents.rst.txt" in result.stderr  # and the exit status is 0
    return cwd, env


def test_search_json_contract(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    result = kbot("search", "婚假可以請幾天？", "--collection", "hr", "-k", "2", "--json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 2
    assert all(set(h) == {"score", "text", "source", "title", "chunk_id"} for h in hits)
    assert hits[0]["source"] == "handbook/請假規定.md"
    assert "婚假八天" in hits[0]["text"]
    assert hits[0]["score"] >= hits[1]["score"]


def test_readable_search_and_collections(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    result = kbot("search", "lost laptop", "-c", "hr", "-k", "1", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "IT security basics" in result.stdout and "handbook/it-security.txt" in result.stdout
    listing = kbot("collections", "--json", cwd=cwd, env=env)
    [row] = json.loads(listing.stdout)
    assert (row["name"], row["documents"]) == ("hr", 4) and row["chunks"] > 0
    table = kbot("collections", cwd=cwd, env=env)
    assert table.stdout.splitlines()[0].split() == ["COLLECTION", "DOCUMENTS", "CHUNKS", "MODEL"]


def test_reingest_reports_unchanged(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    result = kbot("ingest", "handbook", "--collection", "hr", cwd=cwd, env=env)
    assert result.returncode == 0
    assert "0 added, 0 updated, 4 unchanged" in result.stdout


def test_errors_are_plain_sentences(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    result = kbot("search", "x", "--collection", "nope", cwd=cwd, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: Collection 'nope' does not exist. Known collections: hr. "
        "Create it with: kbot ingest PATH --collection nope"
    )
    assert "Traceback" not in result.stderr
    bad = kbot("ingest", "missing.md", "--collection", "hr", cwd=cwd, env=env)
    assert bad.returncode == 1 and "failed: missing.md: no such file or folder" in bad.stderr
    config = kbot("collections", cwd=cwd, env={**env, "KBOT_CHUNK_TOKENS": "x"})
    assert config.returncode == 2 and config.stderr.startswith("Error: Invalid configuration: chunk_tokens")


def test_help_teaches() -> None:
    result = subprocess.run([*KBOT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("ingest", "search", "collections"):
        assert command in result.stdout
    result = subprocess.run([*KBOT, "search", "--help"], capture_output=True, text=True, timeout=60)
    assert "--groups" in result.stdout and "Example" in result.stdout


def test_ask_json_contract(workdir: tuple[Path, dict[str, str]], base_model_dir: str) -> None:
    cwd, env = workdir
    env = {**env, "KBOT_BASE_MODEL": base_model_dir, "KBOT_MAX_NEW_TOKENS": "40"}
    result = kbot("ask", "How many days of sick leave do I get?", "-c", "hr", "--json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {
        "answer", "citations", "model", "adapter", "answer_id",
        "generated", "grounded", "grounding", "fallback",
    }  # fmt: skip
    assert answer["model"] == base_model_dir and answer["adapter"] is None and answer["answer"]
    # The model's own text is kept; the shown one is either it, checked, or the cited fallback.
    assert isinstance(answer["generated"], str) and isinstance(answer["grounding"], list)
    if answer["grounded"]:
        assert answer["answer"] == answer["generated"] and answer["grounding"] == []
    else:
        assert answer["fallback"] in ("extractive", "not_found") and answer["grounding"]
    assert "10 days" in answer["answer"] and "16" not in answer["answer"]
    [first, *_] = answer["citations"]
    assert set(first) == {"source", "title", "quote"}
    assert first["source"] == "handbook/leave-policy.md" and "10 days" in first["quote"]

    readable = kbot("ask", "How many days of sick leave do I get?", "-c", "hr", cwd=cwd, env=env)
    assert readable.returncode == 0, readable.stderr
    assert "Sources:\n  [1] Leave policy (handbook/leave-policy.md)" in readable.stdout


@pytest.mark.slow
async def test_serve_answers_slack_with_the_real_model_and_stops_cleanly(
    workdir: tuple[Path, dict[str, str]], base_model_dir: str
) -> None:
    """`kbot serve` as users run it: Slack off without settings; on with them; SIGTERM drains and exits 0."""
    import signal

    import aiohttp

    from tests.fake_slack import SECRET, event_body, fake_slack_server, sign, wait_until

    cwd, env = workdir
    env = {**env, "KBOT_BASE_MODEL": base_model_dir, "KBOT_MAX_NEW_TOKENS": "24"}
    port = free_port()
    off = subprocess.Popen(
        [*KBOT, "serve", "--port", str(port)], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        health = await wait_healthy(f"http://127.0.0.1:{port}", off, timeout=120)
        assert health == {"status": "ok", "slack": False, "teams": "off"}
        # Ready before anyone asked: the embedded shard opens for the check, the model is loaded.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            ready = await response.json()
        assert response.status == 200, ready
        assert ready["checks"] == {"database": "ok", "vector_store": "ok", "model": "ok"}
    finally:
        off.send_signal(signal.SIGTERM)
        _, stderr = off.communicate(timeout=60)
    assert off.returncode == 0
    assert "Slack is off: set KBOT_SLACK_SIGNING_SECRET and KBOT_SLACK_BOT_TOKEN" in stderr
    assert "Teams is off: set KBOT_TEAMS_APP_ID" in stderr  # no unauthenticated Teams unless asked for

    async with fake_slack_server() as slack:
        env |= {
            "KBOT_SLACK_SIGNING_SECRET": SECRET,
            "KBOT_SLACK_BOT_TOKEN": "xoxb-cli",
            "KBOT_SLACK_API_URL": slack.url + "/api/",
            "KBOT_SLACK_UPDATE_INTERVAL_S": "0.2",
        }
        on = subprocess.Popen(
            [*KBOT, "serve", "--port", str(port)], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            url = f"http://127.0.0.1:{port}"
            assert (await wait_healthy(url, on, timeout=120))["slack"] is True
            event = {
                "type": "app_mention",
                "user": "U1",
                "channel": "C1",
                "ts": "1700000000.000100",
                "text": "<@UBOT> How many days of sick leave do I get?",
            }
            body = event_body(event, "EvCLI")
            async with aiohttp.ClientSession() as session:
                headers = {"Content-Type": "application/json", **sign(body)}
                async with session.post(url + "/slack/events", data=body, headers=headers) as response:
                    assert response.status == 200

            def final_answer() -> bool:
                return any(
                    "Sources" in json.dumps(c.params.get("blocks", []))
                    for c in slack.named("chat.stopStream")
                )

            await wait_until(final_answer, timeout=120)
            final = next(
                c.params
                for c in slack.named("chat.stopStream")
                if "Sources" in json.dumps(c.params["blocks"])
            )
            assert final["channel"] == "C1" and "leave-policy.md" in json.dumps(final["blocks"])
            # Checked before it is shown: the answer streams whole, in one start, under the mention.
            [start] = slack.named("chat.startStream")
            assert start.params["thread_ts"] == "1700000000.000100" and start.params["_ts"] == final["ts"]
            assert "10 days" in start.params["markdown_text"] and not slack.named("chat.appendStream")
        finally:
            on.send_signal(signal.SIGTERM)
            _, stderr = on.communicate(timeout=60)
        assert on.returncode == 0, stderr
        assert "Slack is on" in stderr


@pytest.mark.slow
def test_learning_commands(workdir: tuple[Path, dict[str, str]], base_model_dir: str, tmp_path: Path) -> None:
    """feedback export → train sft → adapters list/promote/rollback → eval → nightly, as a user runs them."""
    cwd, env = workdir
    env = {**env, "KBOT_BASE_MODEL": base_model_dir, "KBOT_MAX_NEW_TOKENS": "8"}
    exported = kbot("feedback", "export", "--format", "dpo", cwd=cwd, env=env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == "" and "DPO pairs: 0, KTO rows: 0, SFT rows: 0" in exported.stderr
    assert kbot("feedback", "export", "--format", "csv", cwd=cwd, env=env).returncode == 2

    curated = tmp_path / "curated.jsonl"
    curated.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            + "\n"
            for q, a in [("Sick leave?", "Up to 10 days a year."), ("Annual leave?", "20 days a year.")]
        )
    )
    trained = kbot(
        "train", "sft", str(curated), "--steps", "1", "--from", "base", "--version", "v1", cwd=cwd, env=env
    )
    assert trained.returncode == 0, trained.stderr
    assert "Trained v1 (sft, 2 rows, 1 steps" in trained.stdout and "registered, not active" in trained.stdout
    assert kbot("adapters", "list", cwd=cwd, env=env).stdout.startswith("  v1  sft")
    refused = kbot("adapters", "promote", "v1", cwd=cwd, env=env)  # never evaluated: the gate refuses
    assert refused.returncode == 2 and "kbot eval v1 --golden FILE" in refused.stderr, refused.stderr
    assert kbot("adapters", "promote", "v1", "--force", cwd=cwd, env=env).returncode == 0
    assert kbot("adapters", "list", cwd=cwd, env=env).stdout.startswith("* v1")
    rolled = kbot("adapters", "rollback", cwd=cwd, env=env)
    assert rolled.returncode == 0 and "base model answers now" in rolled.stdout
    assert kbot("adapters", "list", cwd=cwd, env=env).stdout.startswith("  v1")

    golden = tmp_path / "golden.jsonl"
    pair = {
        "prompt": [{"role": "user", "content": "Sick leave?"}],
        "chosen": [{"role": "assistant", "content": "Up to 10 days a year."}],
        "rejected": [{"role": "assistant", "content": "No idea."}],
    }
    golden.write_text(
        json.dumps(pair)
        + "\n"
        + json.dumps(
            {"question": "How many days of sick leave?", "collections": ["hr"], "facts": ["10 days"]}
        )
        + "\n"
    )
    report = tmp_path / "report.json"
    evaluated = kbot(
        "eval", "v1", "--against", "base", "--golden", str(golden), "--report", str(report), cwd=cwd, env=env
    )
    assert evaluated.returncode in (0, 1), evaluated.stderr  # 1 = the gate would refuse it
    body = json.loads(report.read_text())
    assert body["candidate"] == "v1" and body["against"] == "base"
    assert body["metrics"]["against"]["preference_accuracy"] == 0.5
    assert body["metrics"]["candidate"]["fact_hit_rate"] is not None
    assert "| preference_accuracy |" in evaluated.stdout
    verdict = "passed" if evaluated.returncode == 0 else "refused"
    assert f"gate: {verdict} vs base" in kbot("adapters", "list", cwd=cwd, env=env).stdout

    nightly = kbot("nightly", "--min-pairs", "5", cwd=cwd, env=env)
    assert nightly.returncode == 0, nightly.stderr
    assert "skipped — too little feedback: 0 pairs" in nightly.stdout
    assert "(need 5 of either" in nightly.stdout


LOGGING_PROBE = """
import asyncio, sys
from sqlalchemy import text
from kbot.errors import StoreError
from kbot.logs import configure
from kbot.db import Database

configure(int(sys.argv[1]))

async def main():
    db = Database("sqlite+aiosqlite:///" + sys.argv[2])
    async with db.session() as s:
        await s.execute(text("SELECT :said"), {"said": "QUESTION-MARKER"})
    try:
        async with db.session() as s:
            await s.execute(text("INSERT INTO nowhere VALUES (:said)"), {"said": "ERROR-MARKER"})
    except StoreError as exc:  # what users see, and the cause logged with it
        print("error:", exc, "| cause:", exc.__cause__)
    await db.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("verbosity", [2, 3])
def test_debug_logs_leave_out_what_people_wrote_unless_asked(tmp_path: Path, verbosity: int) -> None:
    """-vv is debug output an operator may share; SQL values (questions, answers) only at -vvv,
    and never inside error messages."""
    script = tmp_path / "probe.py"
    script.write_text(LOGGING_PROBE)
    run = subprocess.run(
        [sys.executable, str(script), str(verbosity), str(tmp_path / "k.db")],
        capture_output=True,
        text=True,
        cwd=Path.cwd(),
        check=True,
        timeout=120,
    )
    assert "DEBUG" in run.stderr  # debug output is on
    assert "no such table: nowhere" in run.stdout and "ERROR-MARKER" not in run.stdout
    assert ("QUESTION-MARKER" in run.stderr) == ("ERROR-MARKER" in run.stderr) == (verbosity == 3)


def test_delete_documents_then_a_collection(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "handbook")
    env = {**os.environ, "KBOT_DATA_DIR": str(tmp_path / "state"), "PYTHONPATH": str(Path.cwd())}
    env.pop("KBOT_DATABASE_URL", None)
    env.pop("KBOT_QDRANT_URL", None)
    assert kbot("ingest", "handbook", "-c", "hr", cwd=tmp_path, env=env).returncode == 0
    before = kbot("search", "parental leave weeks", "-c", "hr", "-k", "3", "--json", cwd=tmp_path, env=env)
    assert "handbook/leave-policy.md" in {h["source"] for h in json.loads(before.stdout)}

    gone = kbot("delete", "handbook/leave-policy.md", "gone.md", "-c", "hr", cwd=tmp_path, env=env)
    assert gone.returncode == 1  # gone.md was never ingested
    assert gone.stdout.splitlines()[:2] == ["hr: 1 document deleted", "  deleted: handbook/leave-policy.md"]
    assert "not in hr: gone.md" in gone.stderr
    after = kbot("search", "parental leave weeks", "-c", "hr", "-k", "5", "--json", cwd=tmp_path, env=env)
    assert "handbook/leave-policy.md" not in {h["source"] for h in json.loads(after.stdout)}
    keyword = kbot("search", "parental", "-c", "hr", "-k", "5", "--json", cwd=tmp_path, env=env)
    assert all(h["source"] != "handbook/leave-policy.md" for h in json.loads(keyword.stdout))
    [row] = json.loads(kbot("collections", "--json", cwd=tmp_path, env=env).stdout)
    assert row["documents"] == 3

    refused = kbot("collections", "delete", "hr", cwd=tmp_path, env=env, input="n\n")
    assert refused.returncode == 1 and "Nothing deleted." in refused.stdout
    dropped = kbot("collections", "delete", "hr", "--yes", cwd=tmp_path, env=env)
    assert dropped.returncode == 0 and dropped.stdout.startswith("Deleted collection hr: 3 documents,")
    assert json.loads(kbot("collections", "--json", cwd=tmp_path, env=env).stdout) == []
    unknown = kbot("search", "parental", "-c", "hr", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "does not exist" in unknown.stderr


def test_forget_a_person(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    typo = kbot("forget", "U0123", "--yes", cwd=cwd, env=env)
    assert typo.returncode == 2 and "write PLATFORM:ID, e.g. slack:U0123" in typo.stderr
    done = kbot("forget", "slack:U0123", "--yes", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == "Forgot slack:U0123: 0 answers, 0 votes, 0 corrections, 0 events, 0 conversations, 0 waiting."
    )
