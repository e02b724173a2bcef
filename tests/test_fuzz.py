"""Bad input (issue 8): Slack, Teams and web payloads and every loader, fuzzed with hypothesis.

Each platform test runs one server (tests/slack_env.py: fake Slack, fake model, real stores) for
all of its examples; hypothesis draws them in a worker thread and hands each to the server's
event loop. For every example:

- the status is below 500: the platform's ack, or 4xx for the sender's mistake;
- nothing failed out of sight: no log record carries a traceback that is not kbot's own error
  (bolt's listener errors, botbuilder's turn errors, aiohttp's "Error handling request", a
  background task's), no question ended "failed";
- what kbot sent to Slack and Teams names only channels, users and threads the payload named.

Every loader gets random and hostile bytes: a LoadedDocument or a DocumentError, within a time
budget. Examples are derandomized and no example database is kept: CI runs the same inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import signal
import time
import urllib.parse
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.limits import MAX_QUESTION, QUESTION_TOKENS_CUT
from kbot.db.models import Answer
from kbot.errors import DocumentError, KbotError
from knowledge.document import LoadedDocument
from knowledge.embeddings import Embedder
from knowledge.loaders import load_document
from tests import fuzz_strategies as fs
from tests.fake_slack import SECRET, wait_until
from tests.fake_teams import BOT_ID, activity, fake_connector
from tests.slack_env import SlackEnv, mention, message, slack_env

T = TypeVar("T")
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
EXAMPLE_BUDGET_S = 30.0  # one request and the answer it starts, on a busy 2-core machine
LOADER_BUDGET_S = 15.0
LONG_QUESTION = "How many days of sick leave do I get? " * 300
# Cut to 4,000 characters, then to 512 tokens (the fake model's backend estimates 4 characters
# each): the asker hears of the token cut.
TOKENS_CUT = QUESTION_TOKENS_CUT.format(limit=512)
CUT_QUESTION = LONG_QUESTION[: 512 * 4].strip()


class LogWatch(logging.Handler):
    """Keeps every record that is an error or carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def unexpected(self, since: int = 0) -> list[str]:
        """Tracebacks that are not kbot's own errors: failures nothing handled."""
        found = []
        for record in self.records[since:]:
            error = record.exc_info[1] if record.exc_info else None
            if error is not None and not isinstance(error, KbotError):
                found.append(f"{record.name}: {record.getMessage()} ({error!r})"[:2000])
        return found


@contextmanager
def watching() -> Iterator[LogWatch]:
    watch = LogWatch()
    logging.getLogger().addHandler(watch)
    try:
        yield watch
    finally:
        logging.getLogger().removeHandler(watch)


async def fuzz(strategy: st.SearchStrategy[T], check: Callable[[T], Awaitable[None]], examples: int) -> None:
    """Run ``check`` on this event loop for each example hypothesis draws (in a worker thread)."""
    loop = asyncio.get_running_loop()

    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def run(value: T) -> None:
        done = asyncio.run_coroutine_threadsafe(asyncio.wait_for(check(value), EXAMPLE_BUDGET_S), loop)
        done.result()

    await asyncio.to_thread(run)


async def settle() -> None:
    """Wait for what the last request started: bolt's listeners and kbot's answers."""
    await asyncio.sleep(0.01)
    deadline = time.monotonic() + EXAMPLE_BUDGET_S
    while time.monotonic() < deadline:
        busy = [
            task
            for task in asyncio.all_tasks()
            if not task.done()
            and (
                task.get_name().startswith("answer ")
                or "run_ack_function" in getattr(task.get_coro(), "__qualname__", "")
            )
        ]
        if not busy:
            return
        await asyncio.wait(busy, timeout=1)
    raise AssertionError("a listener or an answer is still running")


def named_strings(value: Any, *, scalars: bool = False) -> list[Any]:
    """Every string in a payload (JSON inside strings too), and what the fakes decode them to;
    with ``scalars``, numbers and booleans as strings too (botbuilder reads them so)."""
    found: list[Any] = []
    if scalars and isinstance(value, int | float) and not isinstance(value, bool):
        found.append(str(value))
    if isinstance(value, str):
        found.append(value)
        if value[:1] in "[{":
            try:
                inner = json.loads(value)
            except (ValueError, RecursionError):
                return found
            found += [inner, *named_strings(inner, scalars=scalars)]
    elif isinstance(value, dict):
        for item in value.values():
            found += named_strings(item, scalars=scalars)
    elif isinstance(value, list):
        for item in value:
            found += named_strings(item, scalars=scalars)
    return found


def strange_slack_calls(env: SlackEnv, since: int, payload: Any) -> list[str]:
    """Calls naming a channel, user, thread or trigger the payload did not name (``str({})``…)."""
    named = named_strings(payload)
    strange = []
    for call in env.slack.calls[since:]:
        for key in ("channel", "user", "thread_ts", "timestamp", "trigger_id"):
            value = call.params.get(key)
            if value is not None and not any(value == name for name in named):
                strange.append(f"{call.method} {key}={value!r}"[:300])
    return strange


def strange_model_requests(env: SlackEnv, since: int) -> list[str]:
    """Requests to the model that are not a list of text messages ending in a question of at most
    MAX_QUESTION characters."""
    strange = []
    for _kind, body in env.model.requests[since:]:
        messages = body.get("messages") or [{}]
        question = str(messages[-1].get("content", "")).rpartition("\n\nQuestion: ")[2]
        if not all(isinstance(m.get("content"), str) for m in messages) or len(question) > MAX_QUESTION:
            strange.append(json.dumps(body)[:300])
    return strange


# --- Slack -------------------------------------------------------------------------------------


def signed(body: bytes, content_type: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": content_type,
    }


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path, embedder, rate_limit_per_minute=30) as e:
        yield e


async def _slack_example(env: SlackEnv, watch: LogWatch, body: bytes, content_type: str, payload: Any) -> int:
    calls, records, asked = len(env.slack.calls), len(watch.records), len(env.model.requests)
    response = await env.client.post("/slack/events", data=body, headers=signed(body, content_type))
    text = await response.text()
    assert response.status < 500, f"{response.status}: {text[:300]}"
    await settle()
    assert watch.unexpected(records) == []
    assert env.stats["failed"] == 0
    assert strange_slack_calls(env, calls, payload) == []
    assert strange_model_requests(env, asked) == []
    return response.status


async def test_slack_events_never_fail_unseen(env: SlackEnv) -> None:
    async def check(body: dict[str, Any]) -> None:
        status = await _slack_example(env, watch, json.dumps(body).encode(), "application/json", body)
        assert status in (200, 400, 404)

    with watching() as watch:
        await fuzz(fs.slack_events, check, examples=150)
    assert env.stats["answered"] + env.stats["rate_limited"] > 0, "no example reached the answer path"


async def test_slack_interactions_never_fail_unseen(env: SlackEnv) -> None:
    async def check(payload: Any) -> None:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        await _slack_example(env, watch, body, "application/x-www-form-urlencoded", payload)

    with watching() as watch:
        await fuzz(fs.slack_interactions, check, examples=120)


RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    fs.junk.map(lambda value: json.dumps(value).encode()),
    fs.junk.map(lambda value: b"payload=" + urllib.parse.quote(json.dumps(value)).encode()),
    st.text(max_size=100).map(
        lambda text: f'{{"type": "url_verification", "challenge": {json.dumps(text)}}}'.encode()
    ),
    st.sampled_from(
        [
            b"[" * 100_000,  # deeper than the JSON parser recurses
            b"payload=" + b"%5B" * 100_000,
            b'{"type": "event_callback", "event": {"type": "message", "text": "\xff\xfe"}}',
            b"\xef\xbb\xbf{}",
            b"a=b&payload",
            b"x" * (1024**2 + 1),  # over the server's body limit
        ]
    ),
)


async def test_slack_raw_bodies_are_4xx_or_acked(env: SlackEnv) -> None:
    async def check(case: tuple[bytes, str]) -> None:
        body, content_type = case
        status = await _slack_example(env, watch, body, content_type, None)
        if len(body) > 1024**2:
            assert status == 413

    types = st.sampled_from(
        [
            "application/json",
            "application/json; charset=no-such-charset",
            "application/x-www-form-urlencoded",
            "text/plain",
            "",
        ]
    )
    with watching() as watch:
        await fuzz(st.tuples(RAW_BODIES, types), check, examples=80)


async def test_a_long_slack_question_is_cut_with_a_private_notice(env: SlackEnv) -> None:
    await env.event(mention(LONG_QUESTION, user="U7"))
    await env.event(message(LONG_QUESTION, user="U8"))  # chatter kbot ignores: no notice either
    await wait_until(lambda: env.stats["answered"] == 1 and env.stats["ignored"] == 1)
    [notice] = [c.params for c in env.slack.named("chat.postEphemeral")]
    assert (notice["user"], notice["text"]) == ("U7", TOKENS_CUT)
    async with env.runtime.service.ledger._db.session() as session:
        [answer] = (await session.scalars(select(Answer))).all()
    assert answer.question == CUT_QUESTION


# --- Teams (the Emulator mode: unauthenticated, loopback only) ----------------------------------


async def test_teams_activities_never_fail_unseen(tmp_path: Path, embedder: Embedder) -> None:
    async with fake_connector() as connector, slack_env(tmp_path, embedder, teams_emulator=True) as env:

        async def check(body: dict[str, Any]) -> None:
            sent, records, asked = len(connector.sent), len(watch.records), len(env.model.requests)
            response = await env.client.post(
                "/api/messages", data=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            text = await response.text()
            unknown_invoke = body.get("type") == "invoke" and body.get("name") != "message/submitAction"
            # Bot Framework's answer to an invoke a bot does not implement: not an error.
            assert response.status < 500 or (unknown_invoke and response.status == 501), text[:300]
            await settle()
            assert watch.unexpected(records) == []
            assert env.stats["failed"] == 0
            assert strange_model_requests(env, asked) == []
            named = named_strings(body, scalars=True)
            for item in connector.sent[sent:]:
                conversation = item.activity.get("conversation", {}).get("id")
                assert conversation in named, f"sent to a conversation the activity did not name: {item}"

        with watching() as watch:
            await fuzz(fs.teams_activities(connector.url, BOT_ID), check, examples=150)
        assert env.stats["answered"] + env.stats["ignored"] > 0, "no example reached the answer path"


async def test_teams_raw_bodies_are_4xx(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder, teams_emulator=True) as env:

        async def check(case: tuple[bytes, str]) -> None:
            body, content_type = case
            response = await env.client.post(
                "/api/messages", data=body, headers={"Content-Type": content_type}
            )
            assert 400 <= response.status < 500, f"{response.status}: {(await response.text())[:300]}"
            assert watch.unexpected() == []

        types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"])
        with watching() as watch:
            await fuzz(st.tuples(RAW_BODIES, types), check, examples=60)


async def test_a_long_teams_question_is_cut_with_a_notice(tmp_path: Path, embedder: Embedder) -> None:
    async with fake_connector() as connector, slack_env(tmp_path, embedder, teams_emulator=True) as env:
        headers = {"Content-Type": "application/json"}
        body = activity(connector.url, text=LONG_QUESTION, channelId="emulator")
        assert (await env.client.post("/api/messages", data=json.dumps(body), headers=headers)).status < 300
        await wait_until(lambda: env.stats["answered"] == 1)
        notice, answer = (m["text"] for m in connector.messages())
        assert notice == TOKENS_CUT and answer.startswith("Sick leave is 10 days")
        async with env.runtime.service.ledger._db.session() as session:
            [row] = (await session.scalars(select(Answer))).all()
        assert row.question == CUT_QUESTION


# --- web -----------------------------------------------------------------------------------


async def test_web_api_answers_4xx_for_bad_requests(env: SlackEnv) -> None:
    async def check(case: tuple[str, bytes, str, str, str]) -> None:
        path, body, content_type, fetch_site, cookie = case
        records, asked = len(watch.records), len(env.model.requests)
        headers = {
            "Content-Type": content_type,
            "Sec-Fetch-Site": fetch_site,
            "Cookie": f"kbot_visitor={cookie}",
        }
        response = await env.client.post(path, data=body, headers=headers)
        text = await response.text()
        assert response.status < 500, f"{response.status}: {text[:300]}"
        if len(body) > 1024**2:
            assert response.status in (403, 413, 415)  # refused before or while reading the body
        if path == "/api/chat" and response.status == 200:
            events = [block.split("\n", 1)[0] for block in text.split("\n\n") if block.strip()]
            assert events[-1] == "event: end", text[:300]
            # Past the address's rate limit (the fuzzer is one address) a question is refused, not cut.
            if len(json.loads(body)["text"]) > MAX_QUESTION and '"outcome": "rate_limited"' not in text:
                assert f'"text": "{TOKENS_CUT}"' in text.split("\n\n")[0], text[:300]
        await settle()
        assert watch.unexpected(records) == []
        assert env.stats["failed"] == 0
        assert strange_model_requests(env, asked) == []

    bodies = fs.web_bodies | st.just(b'{"text": "' + b"x" * 1024**2 + b'"}')
    fetch_sites = st.sampled_from(["same-origin", "none", "cross-site", ""])
    paths = st.sampled_from(["/api/chat", "/api/feedback"])
    with watching() as watch:
        await fuzz(
            st.tuples(paths, bodies, fs.content_types, fetch_sites, fs.header_text), check, examples=120
        )


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"[" * 100_000, "application/json"), (b"{}", "application/json; charset=no-such-charset")],
    ids=["nested", "charset"],
)
async def test_web_json_the_parser_refuses_is_a_4xx(env: SlackEnv, body: bytes, content_type: str) -> None:
    for path in ("/api/chat", "/api/feedback"):
        response = await env.client.post(path, data=body, headers={"Content-Type": content_type})
        assert 400 <= response.status < 500


# --- loaders -----------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised into a loader that ran past its budget (a BaseException: the loader dispatch must not
    turn it into a DocumentLoadError)."""


def load_within_budget(
    name: str, data: bytes, budget: float = LOADER_BUDGET_S
) -> LoadedDocument | DocumentError:
    """The document, or kbot's own DocumentError; anything else fails the test."""

    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Hang(f"{name} ({len(data)} bytes) still loading after {budget} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        document = load_document(Path(name), data=data)
    except DocumentError as exc:
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(document, LoadedDocument) and not document.is_empty
    return document


SUFFIXES = [".md", ".txt", ".rst", ".html", ".pdf", ".docx"]


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(SUFFIXES), st.binary(max_size=4096) | st.text(max_size=500).map(str.encode))
def test_loaders_take_any_bytes(suffix: str, data: bytes) -> None:
    load_within_budget(f"random{suffix}", data)


@settings(FUZZ, max_examples=200)
@given(
    st.one_of(
        st.tuples(st.just(".md"), fs.markdown),
        st.tuples(st.just(".rst"), fs.rst),
        st.tuples(st.just(".html"), fs.html),
        st.tuples(st.just(".txt"), fs.markdown),
    )
)
def test_text_loaders_take_hostile_markup(case: tuple[str, bytes]) -> None:
    suffix, data = case
    load_within_budget(f"hostile{suffix}", data)


@settings(FUZZ, max_examples=150)
@given(st.tuples(st.just(".pdf"), fs.mutations(fs.sample_pdf())) | st.tuples(st.just(".docx"), fs.docx_files))
def test_office_loaders_take_broken_files(case: tuple[str, bytes]) -> None:
    suffix, data = case
    load_within_budget(f"broken{suffix}", data)


def _paragraphs_docx(paragraph: bytes, count: int) -> bytes:
    document = zipfile.ZipFile(io.BytesIO(fs.sample_docx())).read("word/document.xml")
    return fs.docx_with({"word/document.xml": document.replace(b"<w:body>", b"<w:body>" + paragraph * count)})


def _zip_bomb() -> bytes:
    """A DOCX whose document.xml unpacks to 100 MB of empty paragraphs."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fs.sample_docx())) as source, zipfile.ZipFile(out, "w") as bomb:
        for name in source.namelist():
            if name != "word/document.xml":
                bomb.writestr(name, source.read(name), zipfile.ZIP_DEFLATED)
        info = zipfile.ZipInfo("word/document.xml")
        info.compress_type = zipfile.ZIP_DEFLATED
        with bomb.open(info, "w") as part:
            part.write(
                b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
            )
            for _ in range(100):
                part.write(b"<w:p/>" * 174_763)
            part.write(b"</w:body></w:document>")
    return out.getvalue()


def _pdf_with_stream(stream: bytes) -> bytes:
    import zlib

    content = zlib.compress(stream, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 5\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


HOSTILE_FILES = {
    "nested.html": b"<div>" * 100_000 + b"text",
    "headers.html": b"<header>" * 20_000 + b"<p>text</p>",
    "table.html": b"<table>" + b"<tr><td>cell" * 30_000,
    "nested.md": b"> " * 5_000 + b"text\n" + b"- " * 5_000 + b"item\n",
    "brackets.md": b"[a](" * 30_000 + b"*a" * 30_000,
    "nested.rst": b"".join(b"  " * i + b"- item\n\n" for i in range(400)),
    "roles.rst": b":func:`x` |sub| a_ [#]_ " * 20_000,
    "long-line.txt": b"a" * 5_000_000,
    "nul.txt": b"text\x00" * 100_000,
    "utf16-no-bom.txt": "十天病假\n".encode("utf-16-le") * 10_000,
    "latin1.md": "# Café\n\nÉté à Noël.\n".encode("latin-1") * 1_000,
    "bom-only.txt": b"\xef\xbb\xbf",
    "many-paragraphs.docx": _paragraphs_docx(
        b"<w:p><w:r><w:t>Ten days of sick leave.</w:t></w:r></w:p>", 20_000
    ),
    "zip-bomb.docx": b"",  # built in the test: 100 MB to compress
    "flate-bomb.pdf": b"",
    "cyclic.pdf": _pdf_with_stream(b"BT (hi) Tj ET").replace(b"/Kids [3 0 R]", b"/Kids [2 0 R]"),
    "tokens.pdf": _pdf_with_stream(b"BT " + b"(a) Tj " * 500_000 + b"ET"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_files_load_or_fail_cleanly_in_time(name: str) -> None:
    data = HOSTILE_FILES[name]
    if name == "zip-bomb.docx":
        data = _zip_bomb()
    elif name == "flate-bomb.pdf":
        data = _pdf_with_stream(b"\x00" * 100_000_000)
    loaded = load_within_budget(name, data)
    if name == "zip-bomb.docx":
        assert isinstance(loaded, DocumentError) and "zip bomb" in str(loaded)
    if name in ("many-paragraphs.docx", "utf16-no-bom.txt", "latin1.md", "long-line.txt"):
        assert isinstance(loaded, LoadedDocument), loaded  # big or oddly encoded, but real documents
