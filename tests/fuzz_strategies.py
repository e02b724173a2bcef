"""Hypothesis strategies for tests/test_fuzz.py: platform payloads and files, malformed on purpose.

Every field that kbot or a library it uses reads is sometimes right, sometimes missing, sometimes
of another JSON type, sometimes huge or hostile; the rest of the payload keeps its real shape so
that most examples get past the first check and reach the code behind it.
"""

from __future__ import annotations

import io
import json
import zipfile
from functools import cache
from typing import Any

from hypothesis import strategies as st

from bot.slack import render
from tests.fake_slack import BOT_USER

# Strings that broke, or could break, something: regex backtracking, escapes, ids, sizes.
HOSTILE = [
    "",
    " ",
    "\x00",
    "\u202e\ufeff\u200b",
    "U1\n\x00\x1b[31m",
    f"<@{BOT_USER}>",
    f"<@{BOT_USER}|kbot> how many days of sick leave?",
    "<!channel> <!here> <#C1|general> <https://x.example|x>",
    "<http://" * 20_000,  # quadratic in the old mention/link patterns: minutes of a blocked event loop
    "<@U1|" * 20_000,
    "&lt;&gt;&amp;" * 500,
    "sick leave " * 2_000,  # longer than a question may be
    "🙂" * 5_000,
    "'; DROP TABLE answers; --",
    "%s%n{0}{{7*7}}",
    "../../etc/passwd",
    "[1, 2]",
    '{"a": 1}',
    "None",
]
# Any JSON value, nested a little.
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
hostile = st.sampled_from(HOSTILE)
DELETE = object()  # an edit that removes the field
texts = st.one_of(
    st.sampled_from(["How many days of sick leave do I get?", f"<@{BOT_USER}> sick leave?"]),
    st.text(),
    hostile,
)
timestamps = st.integers(1, 10**6).map(lambda n: f"1700{n:06d}.000100")  # mostly new: not deduped


def corrupted(
    base: st.SearchStrategy[dict[str, Any]], paths: list[tuple[str, ...]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid payload with up to four of its fields (at ``paths``) deleted or replaced by a hostile
    string, any text or any JSON value; often none, so that many examples get through."""
    value = st.one_of(st.just(DELETE), hostile, st.text(max_size=12), junk)
    edits = st.lists(st.tuples(st.sampled_from(paths), value), max_size=4)

    def apply(payload: dict[str, Any], changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
        payload = json.loads(json.dumps(payload))  # a deep copy
        for path, new in changes:
            parent: Any = payload
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue  # an earlier edit replaced the object this field was in
            if new is DELETE:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = new
        return payload

    return st.builds(apply, base, edits)


# --- Slack ---------------------------------------------------------------------------------

_users = st.sampled_from(["U1", "U2", "U3"])
_slack_event = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["app_mention", "message"]),
            "user": _users,
            "channel": st.sampled_from(["C1", "CALL", "COFF", "D1"]),
            "channel_type": st.sampled_from(["channel", "im"]),
            "ts": timestamps,
            "event_ts": timestamps,
            "text": texts,
        },
        optional={
            "thread_ts": timestamps,
            "subtype": st.sampled_from(["thread_broadcast", "message_changed"]),
        },
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["reaction_added", "reaction_removed"]),
            "user": _users,
            "reaction": st.sampled_from(["+1", "-1", "thumbsup::skin-tone-2", "heart"]),
            "item": st.fixed_dictionaries(
                {"type": st.just("message"), "channel": st.just("C1"), "ts": timestamps}
            ),
            "item_user": st.just(BOT_USER),
            "event_ts": timestamps,
        }
    ),
)
_EVENT_FIELDS = [
    "type", "user", "channel", "channel_type", "ts", "thread_ts", "text", "subtype", "bot_id", "team",
    "reaction", "item", "item_user", "message", "previous_message", "blocks", "files",
]  # fmt: skip
slack_events = corrupted(
    st.fixed_dictionaries(
        {
            "type": st.just("event_callback"),
            "team_id": st.just("T0TEAM"),
            "event": _slack_event,
            "event_id": st.integers(1, 10**9).map(lambda n: f"Ev{n}"),
        }
    ),
    [
        ("type",), ("team_id",), ("event",), ("event_id",), ("authorizations",), ("enterprise",),
        ("user",), ("is_ext_shared_channel",), ("event", "item", "channel"), ("event", "item", "ts"),
        *[("event", name) for name in _EVENT_FIELDS],
    ],
)  # fmt: skip

_click = st.fixed_dictionaries(
    {
        "type": st.just("block_actions"),
        "user": st.fixed_dictionaries({"id": _users}),
        "trigger_id": st.just("1.2.3"),
        "container": st.fixed_dictionaries({"channel_id": st.just("C1"), "message_ts": timestamps}),
        "channel": st.just({"id": "C1"}),
        "message": st.fixed_dictionaries({"ts": timestamps, "thread_ts": timestamps}),
        "actions": st.lists(
            st.fixed_dictionaries(
                {
                    "action_id": st.sampled_from([render.VOTE_UP, render.VOTE_DOWN, render.SUGGEST]),
                    "value": st.uuids().map(str) | texts,
                    "type": st.just("button"),
                }
            ),
            min_size=1,
            max_size=1,
        ),
    }
)
_submission = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["view_submission", "view_closed"]),
        "user": st.fixed_dictionaries({"id": _users}),
        "view": st.fixed_dictionaries(
            {
                "type": st.just("modal"),
                "callback_id": st.just(render.CORRECTION_VIEW),
                "private_metadata": st.fixed_dictionaries(
                    {"answer_id": st.uuids().map(str), "channel": st.just("C1"), "thread": timestamps}
                ).map(json.dumps),
                "state": st.fixed_dictionaries(
                    {
                        "values": st.fixed_dictionaries(
                            {
                                render.CORRECTION_BLOCK: st.fixed_dictionaries(
                                    {render.CORRECTION_INPUT: st.fixed_dictionaries({"value": texts})}
                                )
                            }
                        )
                    }
                ),
            }
        ),
    }
)
_C, _I = render.CORRECTION_BLOCK, render.CORRECTION_INPUT
slack_interactions = st.one_of(
    corrupted(
        _click,
        [
            ("type",), ("user",), ("user", "id"), ("trigger_id",), ("container",),
            ("container", "channel_id"), ("channel",), ("message",), ("message", "thread_ts"),
            ("actions",), ("team",), ("response_urls",),
        ],
    ),
    corrupted(
        _submission,
        [
            ("type",), ("user",), ("user", "id"), ("view",), ("view", "type"), ("view", "callback_id"),
            ("view", "private_metadata"), ("view", "state"), ("view", "state", "values"),
            ("view", "state", "values", _C), ("view", "state", "values", _C, _I),
            ("view", "state", "values", _C, _I, "value"), ("view", "app_installed_team_id"),
        ],
    ),
    junk,
)  # fmt: skip

# --- Teams ---------------------------------------------------------------------------------


def teams_activities(service_url: str, bot_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """Activities shaped like Teams', with a few fields missing, mistyped or hostile at times."""
    personal = {"conversationType": "personal", "tenantId": "t1", "id": "a:1alice"}
    channel = {"conversationType": "channel", "tenantId": "t1", "id": "19:c@thread.tacv2;messageid=1"}
    common = {
        "id": st.integers(1, 10**9).map(str),
        "serviceUrl": st.just(service_url),
        "channelId": st.just("msteams"),
        "from": st.just({"id": "29:1alice", "name": "Alice", "aadObjectId": "aad-alice"}),
        "recipient": st.just({"id": bot_id, "name": "kbot"}),
        "conversation": st.sampled_from([personal, channel]),
        "channelData": st.just(
            {"tenant": {"id": "t1"}, "team": {"id": "19:team"}, "channel": {"id": "19:c"}}
        ),
    }
    mention = {"type": "mention", "text": "<at>kbot</at>", "mentioned": {"id": bot_id, "name": "kbot"}}
    message = st.fixed_dictionaries(
        {**common, "type": st.just("message"), "text": texts.map(lambda t: f"<at>kbot</at> {t}")},
        optional={"entities": st.just([mention, {"type": "clientInfo", "locale": "en"}])},
    )
    feedback = st.fixed_dictionaries(
        {
            **common,
            "type": st.just("invoke"),
            "name": st.just("message/submitAction"),
            "replyToId": st.integers(1, 10**6).map(str),
            "value": st.fixed_dictionaries(
                {
                    "actionName": st.just("feedback"),
                    "actionValue": st.fixed_dictionaries(
                        {
                            "reaction": st.sampled_from(["like", "dislike"]),
                            "feedback": texts.map(lambda t: json.dumps({"feedbackText": t})),
                        }
                    ),
                }
            ),
        }
    )
    reaction = st.fixed_dictionaries(
        {
            **common,
            "type": st.just("messageReaction"),
            "replyToId": st.integers(1, 10**6).map(str),
            "reactionsAdded": st.just([{"type": "like"}]),
        }
    )
    update = st.fixed_dictionaries(
        {**common, "type": st.just("conversationUpdate"), "membersAdded": st.just([{"id": "29:1bob"}])}
    )
    paths = [
        ("type",), ("id",), ("serviceUrl",), ("from",), ("from", "id"), ("from", "aadObjectId"),
        ("recipient",), ("recipient", "id"), ("conversation",), ("conversation", "id"),
        ("conversation", "conversationType"), ("conversation", "tenantId"), ("text",), ("entities",),
        ("channelData",), ("channelData", "team"), ("channelData", "tenant"), ("name",), ("value",),
        ("value", "actionValue"), ("value", "actionValue", "reaction"), ("value", "actionValue", "feedback"),
        ("replyToId",), ("reactionsAdded",), ("membersAdded",), ("timestamp",), ("attachments",),
    ]  # fmt: skip
    return corrupted(st.one_of(message, feedback, reaction, update), paths)


# --- web -------------------------------------------------------------------------------------

_web_ids = st.uuids().map(str) | st.from_regex(r"[A-Za-z0-9-]{8,64}", fullmatch=True)
_web_chat = st.fixed_dictionaries({"id": _web_ids, "conversation": _web_ids, "text": texts})
_web_feedback = st.fixed_dictionaries(
    {
        "answer_id": _web_ids,
        "kind": st.sampled_from(["vote", "unvote", "correction"]),
        "value": st.sampled_from([1, -1]),
        "text": texts,
    }
)
_WEB_FIELDS = [("id",), ("conversation",), ("text",), ("answer_id",), ("kind",), ("value",)]
web_bodies = st.one_of(
    corrupted(_web_chat | _web_feedback, _WEB_FIELDS).map(lambda body: json.dumps(body).encode()),
    junk.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ]
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)

# --- files -----------------------------------------------------------------------------------


def tokens(*parts: str, max_size: int = 300) -> st.SearchStrategy[bytes]:
    """Text made of a format's special tokens, each run repeated up to 300 times, in some encoding."""
    run = st.tuples(st.sampled_from(parts), st.integers(1, 300)).map(lambda t: t[0] * t[1])
    text = st.lists(run, max_size=max_size).map("".join)
    encoding = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1"])
    return st.tuples(text, encoding).map(lambda t: t[0].encode(t[1], errors="replace"))


COMMON = ("a", "中", " ", "\n", "\r", "\t", "\x00", "\x1b", "\ufeff", "\u202e")
markdown = tokens(*COMMON, "*", "_", "[", "](", "`", "```\n", "<", ">", "#", "- ", "1. ", "|", "\\", "---\n")
rst = tokens(
    *COMMON, "*", "`", "_", ":", "..", "::", "|", "=", "-", "  ", ".. note::", ".. function:: f(*a)\n"
)
html = tokens(
    *COMMON,
    "<div>",
    "</div>",
    "<h1>",
    "</h2>",
    "<table><tr><td>",
    "<li>",
    "<pre>",
    "<br>",
    "<header>",
    "<script>",
    "<!--",
    "<![CDATA[",
    "&amp;",
    "&#0;",
    '<meta charset="no-such-charset">',
    '<meta charset="utf-16">',
)


def mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` truncated, or with a few byte runs overwritten."""
    edit = st.tuples(st.integers(0, len(base) - 1), st.binary(min_size=1, max_size=8))

    def apply(cut: int, edits: list[tuple[int, bytes]]) -> bytes:
        data = bytearray(base)
        for at, new in edits:
            data[at : at + len(new)] = new
        return bytes(data[:cut])

    return st.builds(apply, st.integers(0, len(base)), st.lists(edit, max_size=6))


@cache
def sample_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    for i in range(20):
        pdf.cell(0, 8, f"Line {i}: ten days of paid sick leave", new_x="LMARGIN", new_y="NEXT")
    pdf.set_title("Leave policy")
    return bytes(pdf.output())


@cache
def sample_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Leave policy", 1)
    document.add_paragraph("Ten days of paid sick leave.")
    document.add_paragraph("Ask HR first.", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).merge(table.cell(1, 0)).text = "merged"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_with(replacements: dict[str, bytes], base: bytes | None = None) -> bytes:
    """The sample DOCX with some parts' bytes replaced (new names are added)."""
    source = zipfile.ZipFile(io.BytesIO(base or sample_docx()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, replacements.pop(name, source.read(name)))
        for name, data in replacements.items():
            target.writestr(name, data)
    return out.getvalue()


def _docx_part_edit(part: str, data: bytes) -> bytes:
    return docx_with({part: data})


_PARTS = ["word/document.xml", "word/styles.xml", "[Content_Types].xml", "docProps/core.xml"]


def _mutated_part(part: str) -> st.SearchStrategy[bytes]:
    original = zipfile.ZipFile(io.BytesIO(sample_docx())).read(part)
    return mutations(original).map(lambda data: docx_with({part: data}))


docx_files = st.one_of(
    mutations(sample_docx()),
    st.builds(_docx_part_edit, st.sampled_from(_PARTS), st.binary(max_size=200) | html),
    st.sampled_from(_PARTS).flatmap(_mutated_part),
)
