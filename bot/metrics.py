"""Prometheus metrics of one kbot server, served at ``GET /metrics``; every name starts ``kbot_``.

One registry per process (each replica is scraped on its own). Chat outcomes, answers and votes
are counted in :class:`bot.chat.ChatService`, so Slack, Teams and the web count alike; HTTP
requests in the server's middleware, labelled by route pattern (never the raw path: unbounded
label values would grow the registry without end).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from agent.answering import AnswerResult

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The *_created series double every metric and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

# Answers take seconds, not milliseconds: buckets up to the default model timeout (120 s).
_SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

HTTP_REQUESTS = Counter(
    "kbot_http_requests",
    "HTTP requests served, by route and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "kbot_http_request_seconds",
    "Time to handle an HTTP request (a streamed answer: until its end).",
    ["route"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "kbot_messages",
    "Chat messages handled, by how they ended (answered, ignored, duplicate, rate_limited, failed).",
    ["platform", "outcome"],
    registry=REGISTRY,
)
ANSWERS = Counter(
    "kbot_answers",
    "Answers given, by status (ok, not_found, error).",
    ["platform", "status"],
    registry=REGISTRY,
)
RETRIEVAL_SECONDS = Histogram(
    "kbot_retrieval_seconds",
    "Document search time per answer.",
    ["platform"],
    registry=REGISTRY,
    buckets=_SLOW,
)
GENERATION_SECONDS = Histogram(
    "kbot_generation_seconds",
    "Model generation time per answer.",
    ["platform"],
    registry=REGISTRY,
    buckets=_SLOW,
)
ANSWER_SECONDS = Histogram(
    "kbot_answer_seconds",
    "End to end: question received to final answer shown.",
    ["platform"],
    registry=REGISTRY,
    buckets=_SLOW,
)
FEEDBACK = Counter(
    "kbot_feedback",
    "Feedback recorded: votes (value +1/-1), votes taken back, reasons given for a vote, corrections.",
    ["platform", "kind", "value"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "kbot_errors", "Failures, by kind (the error's class, or timeout).", ["kind"], registry=REGISTRY
)
ACTIVE_ADAPTER = Gauge(
    "kbot_active_adapter",
    '1 for the LoRA adapter version answers use now ("none": the base model).',
    ["version"],
    registry=REGISTRY,
)
FEEDBACK_WAITING = Gauge(
    "kbot_feedback_waiting",
    "Feedback kept on disk while the SQL store is down, not yet written.",
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("kbot_answers_in_flight", "Answers being worked on now.", registry=REGISTRY)


def observe_answer(platform: str, result: AnswerResult, seconds: float) -> None:
    ANSWERS.labels(platform, result.status).inc()
    ANSWER_SECONDS.labels(platform).observe(seconds)
    if "retrieval" in result.timings:
        RETRIEVAL_SECONDS.labels(platform).observe(result.timings["retrieval"])
    if "generation" in result.timings:
        GENERATION_SECONDS.labels(platform).observe(result.timings["generation"])
    if result.status == "error":
        ERRORS.labels(result.error_kind or "answer").inc()


def set_active_adapter(version: str | None) -> None:
    ACTIVE_ADAPTER.clear()
    ACTIVE_ADAPTER.labels(version or "none").set(1)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
