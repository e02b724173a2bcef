"""Log output: plain text for people, or one JSON object per line for log pipelines.

Every record carries the id of the request it happened in (``request_id``), also in background
tasks the request started: asyncio copies context variables into the tasks it creates.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

request_id: ContextVar[str] = ContextVar("request_id", default="")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose debug output (SQL logs: INFO already) holds what people wrote and what kbot
# answered: SQL statements with their values, Slack API request and response bodies. Debug
# logging (-vv) keeps them at these levels; only -vvv lets them write everything.
# slack_bolt logs the whole body of every badly signed request at INFO: an outsider's, of any size.
PAYLOAD_LOGGERS = {
    "aiosqlite": logging.INFO,
    "sqlalchemy.engine": logging.WARNING,
    "slack_sdk": logging.INFO,
    "slack_bolt": logging.WARNING,
    "kbot.slack.bolt": logging.WARNING,
}
# Control characters other than tab: a CR/LF in what someone sent must not start a forged log line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x80-\x9f\u2028\u2029]")
# Attributes every LogRecord has; anything else was passed as ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := getattr(record, "request_id", ""):
            entry["request_id"] = rid
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Plain text lines, one per record: control characters in the message are escaped
    (``\\r``, ``\\n``, ``\\x1b``); a traceback after it keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return _CONTROL.sub(_escape, line)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def configure(verbosity: int) -> None:
    """Log to stderr: warnings (0), progress (1, ``-v``), debug without message bodies (2, ``-vv``),
    everything (3, ``-vvv``)."""
    level = (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG
    logging.basicConfig(level=level, format=TEXT_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    # Set both ways: a process may configure again (the CLI run in-process, a test) and -vvv
    # must then show what an earlier, quieter setting hid.
    for name, quiet in PAYLOAD_LOGGERS.items():
        logging.getLogger(name).setLevel(max(level, quiet) if verbosity < 3 else logging.NOTSET)


def use_format(fmt: Literal["text", "json"]) -> None:
    """Switch the root logger's handlers to ``fmt`` and stamp request ids on their records."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
