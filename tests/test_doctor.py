"""`kbot doctor` against real parts: an embedded store with a small corpus, PostgreSQL, closed ports,
the fake Slack, OpenAI-compatible and Bot Framework servers, and the `kbot` command itself."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botframework.connector.auth import MicrosoftAppCredentials

from agent.adapters import AdapterRegistry
from bot.doctor import Result, diagnose, render
from kbot.db import Database
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder
from tests.fake_openai import fake_openai_server
from tests.fake_slack import SECRET, fake_slack_server
from tests.fake_teams import APP_ID, APP_PASSWORD, LocalCredentialFactory
from tests.kbot_process import kbot
from tests.local_server import serve_locally

CLOSED = "127.0.0.1:1"  # nothing listens on port 1


def found(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


def statuses(results: list[Result]) -> dict[str, str]:
    return {r.check: r.status for r in results}


def settings_in(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


@pytest.fixture
async def ingested(tmp_path: Path, embedder: Embedder) -> Settings:
    """Embedded defaults (SQLite, Qdrant Edge) holding one small collection."""
    settings = settings_in(tmp_path, chunk_tokens=128, chunk_overlap_tokens=16)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text("# Leave\n\nEveryone gets ten days of paid sick leave per year.\n")
    kb = await KnowledgeBase.open(settings, embedder=embedder)
    try:
        report = await kb.ingest([str(docs)], "hr")
    finally:
        await kb.close()
    assert len(report.added) == 1
    return settings


async def test_embedded_defaults_with_a_corpus_are_all_ok(ingested: Settings) -> None:
    results = await diagnose(ingested)
    assert statuses(results) == {
        "config": "ok",
        "database": "ok",
        "vector_store": "ok",
        "embedding": "ok",
        "knowledge": "ok",
        "model": "ok",
        "adapter": "ok",
        "sources": "off",
        "slack": "off",
        "teams": "off",
    }
    by = found(results)
    assert by["knowledge"].detail.startswith("1 collections: hr (1 documents, ")
    assert "schema at revision" in by["database"].detail
    assert by["vector_store"].detail.endswith("points") and "Qdrant Edge shard" in by["vector_store"].detail
    text = render(results)
    assert text.splitlines()[0].startswith("✓ configuration ")
    assert "fix:" not in text and text.endswith("0 failed, 0 warnings, 7 ok, 3 skipped.")


async def test_a_fresh_install_points_to_ingest(tmp_path: Path) -> None:
    results = await diagnose(settings_in(tmp_path))
    by = found(results)
    assert [r.check for r in results if r.status != "ok"] == ["knowledge", "sources", "slack", "teams"]
    assert by["knowledge"].status == "warn"
    assert by["knowledge"].fix == "Add documents: kbot ingest PATH --collection NAME"
    assert not (tmp_path / "data").exists(), "the doctor only reads"


async def test_a_shard_held_by_another_process_is_reported_and_left_alone(
    ingested: Settings, embedder: Embedder
) -> None:
    from knowledge.vectorstore.shared import ShardHost

    kb = await KnowledgeBase.open(ingested, embedder=embedder)  # as a long `kbot ingest` holds it
    try:
        assert await kb.search("sick leave", ["hr"])
        by = found(await diagnose(ingested))
        assert by["vector_store"].status == "warn"
        assert "is open in another process" in by["vector_store"].detail
        assert "KBOT_QDRANT_URL" in by["vector_store"].fix
        [hit] = await kb.search("sick leave", ["hr"])  # the holder is undisturbed
        assert "ten days" in hit.text
        host = ShardHost(ingested.data_dir)  # as `kbot serve` holds it: commands reach it
        await host.start(kb.store)
        try:
            by = found(await diagnose(ingested))
            assert by["vector_store"].status == "ok"
            assert "owned by the running kbot serve" in by["vector_store"].detail
        finally:
            await host.close()
    finally:
        await kb.close()


async def test_unreachable_qdrant_server_fails_with_the_setting_to_fix(tmp_path: Path) -> None:
    by = found(await diagnose(settings_in(tmp_path, qdrant_url=f"http://{CLOSED}")))
    assert by["vector_store"].status == "fail"
    assert by["vector_store"].detail.startswith(f"cannot use Qdrant at http://{CLOSED}: ")
    assert "KBOT_QDRANT_URL" in by["vector_store"].fix


async def test_credentials_in_server_urls_are_never_shown(tmp_path: Path) -> None:
    """A URL may carry a password or a key; the report names the server without them."""
    secret = "url-secret-5d1e"
    settings = settings_in(
        tmp_path,
        qdrant_url=f"http://kbot:{secret}@{CLOSED}/?api_key={secret}",
        model_backend="openai",
        model_url=f"http://{secret}@{CLOSED}/v1",
    )
    results = await diagnose(settings)
    by = found(results)
    assert by["vector_store"].status == "fail" and by["model"].status == "fail"
    assert f"Qdrant at http://kbot:***@{CLOSED}/?api_key=***" in by["vector_store"].detail
    assert f"http://***@{CLOSED}/v1" in by["model"].detail
    assert secret not in json.dumps([asdict(r) for r in results])


async def test_model_server_reachable_missing_and_wrongly_named(tmp_path: Path) -> None:
    closed = settings_in(tmp_path, model_backend="openai", model_url=f"http://{CLOSED}/v1")
    by = found(await diagnose(closed))
    assert by["model"].status == "fail" and "cannot reach the model server" in by["model"].detail
    assert "KBOT_MODEL_URL" in by["model"].fix
    async with fake_openai_server() as server:
        served = settings_in(tmp_path, model_backend="openai", model_url=server.url, base_model="served-base")
        by = found(await diagnose(served))
        assert by["model"] == Result(
            "model", "ok", f"{server.url} answers as served-base (it lists no models)"
        )
        other = settings_in(tmp_path, model_backend="openai", model_url=server.url, base_model="not-served")
        by = found(await diagnose(other))
        assert by["model"].status == "fail" and "answered 404" in by["model"].detail
        assert by["model"].fix == "Set KBOT_BASE_MODEL to a served model."


@asynccontextmanager
async def vllm_model_list(*models: tuple[str, str | None], key: str = "sk-test") -> AsyncIterator[str]:
    """GET /v1/models as vLLM answers it: the base model, then LoRA adapters with their parent."""

    async def listing(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        data = [{"id": i, "object": "model", "owned_by": "vllm", "root": i, "parent": p} for i, p in models]
        return web.json_response({"object": "list", "data": data})

    app = web.Application()
    app.router.add_get("/v1/models", listing)
    async with serve_locally(app) as url:
        yield f"{url}/v1"


async def test_model_list_served_base_key_and_lora_adapters(ingested: Settings, tmp_path: Path) -> None:
    adapter = tmp_path / "dpo-2"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    db = Database(ingested.sql_url)
    try:
        await AdapterRegistry(db).register("dpo-2", base_model="served-base", path=adapter)
        await AdapterRegistry(db).activate("dpo-2")
    finally:
        await db.close()
    async with vllm_model_list(("served-base", None), ("dpo-1", "served-base")) as url:
        model = {"model_backend": "openai", "model_url": url, "base_model": "served-base"}
        served = Settings(data_dir=ingested.data_dir, model_api_key="sk-test", **model)
        by = found(await diagnose(served))
        assert by["model"] == Result("model", "ok", f"{url} serves served-base; LoRA adapters loaded: dpo-1")
        assert by["adapter"].status == "warn" and "not loaded on the model server yet" in by["adapter"].detail
        assert "--enable-lora" in by["adapter"].fix
        by = found(await diagnose(Settings(data_dir=ingested.data_dir, model_api_key="wrong", **model)))
        assert by["model"].status == "fail" and by["model"].detail.startswith(f"{url} answered 401")
        assert by["model"].fix == "Set KBOT_MODEL_API_KEY to the server's --api-key."
        other = Settings(data_dir=ingested.data_dir, model_api_key="sk-test", **{**model, "base_model": "x"})
        by = found(await diagnose(other))
        assert by["model"].detail == f"{url} serves served-base, dpo-1, not x"
        assert by["adapter"].status == "fail", "dpo-2 was trained on served-base"


async def test_a_host_that_never_answers_costs_the_time_limit_only(tmp_path: Path) -> None:
    async with fake_openai_server(delay_s=2) as server:
        slow = settings_in(tmp_path, model_backend="openai", model_url=server.url, base_model="served-base")
        started = time.monotonic()
        by = found(await diagnose(slow, timeout_s=0.5))
        assert time.monotonic() - started < 3
    assert by["model"] == Result(
        "model",
        "fail",
        "no answer within 0.5 s",
        "Check that it runs and is reachable from this machine (address, port, firewall, proxy).",
    )


async def test_slack_token_accepted_refused_and_half_configured(tmp_path: Path) -> None:
    async with fake_slack_server(revoked={"xoxb-revoked"}) as slack:
        configured = {
            "slack_api_url": f"{slack.url}/api/",
            "slack_bot_token": "xoxb-good",
            "slack_signing_secret": SECRET,
        }
        by = found(await diagnose(settings_in(tmp_path, **configured)))
        assert by["slack"] == Result("slack", "ok", "signed in as @kbot in Acme (T0TEAM)")
        assert [c.params["_token"] for c in slack.named("auth.test")] == ["Bearer xoxb-good"]

        by = found(await diagnose(settings_in(tmp_path, **{**configured, "slack_bot_token": "xoxb-revoked"})))
        assert by["slack"].status == "fail"
        assert by["slack"].detail == "Slack refused the bot token: invalid_auth"
        assert "KBOT_SLACK_BOT_TOKEN" in by["slack"].fix

        by = found(await diagnose(settings_in(tmp_path, **{**configured, "slack_signing_secret": None})))
        assert by["slack"].status == "fail" and "KBOT_SLACK_SIGNING_SECRET" in by["slack"].fix
    by = found(
        await diagnose(settings_in(tmp_path, **{**configured, "slack_api_url": f"http://{CLOSED}/api/"}))
    )
    assert by["slack"].status == "fail" and by["slack"].detail.startswith("cannot reach Slack at")


class _RefusedCredentials(MicrosoftAppCredentials):  # type: ignore[misc]
    def get_access_token(self, force_refresh: bool = False) -> str:
        # What MicrosoftAppCredentials raises when Azure AD answers a wrong client secret.
        raise PermissionError(
            "Failed to get access token with error: invalid_client, error_description: "
            "AADSTS7000215: Invalid client secret provided."
        )


class _RefusingFactory(LocalCredentialFactory):
    async def create_credentials(self, app_id: str, *_args: Any) -> MicrosoftAppCredentials:
        return _RefusedCredentials(app_id, self.password)


async def test_teams_token_obtained_or_refused(tmp_path: Path) -> None:
    teams = settings_in(tmp_path, teams_app_id=APP_ID, teams_app_password=APP_PASSWORD)
    by = found(await diagnose(teams, teams_credentials=LocalCredentialFactory(APP_ID, APP_PASSWORD)))
    assert by["teams"] == Result("teams", "ok", f"app {APP_ID} (multi-tenant) got a token from Azure AD")
    by = found(await diagnose(teams, teams_credentials=_RefusingFactory(APP_ID, "wrong")))
    assert by["teams"].status == "fail" and "AADSTS7000215" in by["teams"].detail
    assert "KBOT_TEAMS_APP_PASSWORD" in by["teams"].fix


async def test_changed_embedding_model_and_missing_adapter_files(ingested: Settings, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    db = Database(ingested.sql_url)
    try:
        registry = AdapterRegistry(db)
        await registry.register("v1", base_model=ingested.base_model, path=adapter)
        await registry.activate("v1")
    finally:
        await db.close()
    shutil.rmtree(adapter)
    changed = Settings(data_dir=ingested.data_dir, embedding_model=str(tmp_path / "no-model"))
    by = found(await diagnose(changed))
    assert by["embedding"].status == "fail" and "holds no model" in by["embedding"].detail
    assert by["knowledge"].status == "fail"
    assert (
        by["knowledge"].fix == "Set KBOT_EMBEDDING_MODEL=all-MiniLM-L6-v2, or ingest into a new collection."
    )
    assert by["adapter"].status == "fail" and by["adapter"].detail.startswith(
        "active adapter v1 has no files"
    )
    assert "kbot adapters rollback" in by["adapter"].fix


@pytest.mark.postgres
async def test_postgres_without_tables_then_migrated(own_postgres: str, tmp_path: Path) -> None:
    empty_postgres = own_postgres  # a database of its own, without kbot's tables
    settings = settings_in(tmp_path, database_url=empty_postgres)
    by = found(await diagnose(settings))
    assert by["database"].status == "warn" and by["database"].detail.endswith("has no kbot tables yet")
    assert by["database"].fix.startswith("Run `kbot db upgrade`")
    assert by["knowledge"].status == "off" and by["adapter"].status == "off"
    db = Database(empty_postgres)
    await db.migrate()
    await db.close()
    by = found(await diagnose(settings))
    assert by["database"].status == "ok" and by["knowledge"].status == "warn" and by["adapter"].status == "ok"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "KBOT_DATA_DIR": str(tmp_path / "state"), "PYTHONPATH": str(Path.cwd())}
    return {k: v for k, v in env.items() if not k.startswith("KBOT_") or k == "KBOT_DATA_DIR"}


def test_cli_reports_an_unreachable_database_and_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cli_env, "KBOT_DATABASE_URL": f"postgresql+psycopg://kbot@{CLOSED}/kbot"}
    result = kbot("doctor", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    [database] = [i for i, line in enumerate(lines) if line.startswith("✗ SQL database ")]
    assert f"cannot connect to postgresql+psycopg://kbot@{CLOSED}/kbot: connection " in lines[database]
    fix = "fix: Start the database, or correct KBOT_DATABASE_URL (postgresql+psycopg://user:pw@host:5432/db)."
    assert lines[database + 1].strip() == fix
    assert any(line.startswith("– knowledge        not checked: needs the SQL database") for line in lines)
    assert lines[-1].startswith("1 failed, ")
    assert "Traceback" not in result.stderr

    as_json = kbot("doctor", "--json", env=env, cwd=tmp_path)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [c["check"] for c in report["checks"] if c["status"] == "fail"] == ["database"]
    assert set(report["checks"][0]) == {"check", "status", "detail", "fix"}


def test_cli_invalid_configuration_and_help(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = kbot("doctor", env={**cli_env, "KBOT_CHUNK_TOKENS": "many"}, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("✗ configuration    Invalid configuration: chunk_tokens: ")
    assert "Nothing else was checked" in result.stdout
    help_text = kbot("doctor", "--help", env=cli_env, cwd=tmp_path).stdout
    assert "Exit status: 0 when nothing failed" in " ".join(help_text.split())
    assert "--json" in help_text
