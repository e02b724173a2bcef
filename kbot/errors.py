"""The one error tree of kbot.

Every error kbot raises on purpose derives from :class:`KbotError`; its message is a sentence a
user can act on. Third-party exceptions are re-raised as one of these ``from exc`` so logs keep
the cause while users read the sentence.

    KbotError
    ├── ConfigError                 settings are missing, malformed or contradictory
    ├── StoreError                  the SQL store cannot be reached or migrated
    ├── KnowledgeError
    │   ├── UnknownCollectionError  a search or command names a collection that does not exist
    │   ├── InvalidNameError        a collection or group name kbot cannot accept
    │   ├── DocumentError
    │   │   ├── UnsupportedFileError   no loader for this file type
    │   │   └── DocumentLoadError      the file exists but could not be read or parsed
    │   ├── EmbeddingError          the embedding model could not be loaded or run
    │   └── VectorStoreError        Qdrant (embedded or server) failed or is misconfigured
    ├── AgentError
    │   ├── ModelError              the chat model could not be loaded, reached or finished in time
    │   └── AdapterError            a LoRA adapter is unknown, missing or does not fit the base model
    ├── ChatError                   a chat platform (Slack, Teams) refused or failed a call
    └── FeedbackError               feedback names an answer kbot does not know, or is malformed
        └── StaleReview             a correction changed after the reviewer saw it
"""

from __future__ import annotations


class KbotError(Exception):
    """Base of every error kbot raises on purpose."""


class ConfigError(KbotError):
    """Settings are missing, malformed or contradictory."""


class StoreError(KbotError):
    """The SQL store cannot be reached, migrated or written."""


class KnowledgeError(KbotError):
    """Something went wrong in the knowledge base."""


class UnknownCollectionError(KnowledgeError):
    """A command names a collection that does not exist."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        hint = f"Known collections: {', '.join(known)}." if known else "No collections exist yet."
        super().__init__(
            f"Collection {name!r} does not exist. {hint} Create it with: kbot ingest PATH --collection {name}"
        )


class InvalidNameError(KnowledgeError):
    """A collection or group name that kbot cannot accept."""


class DocumentError(KnowledgeError):
    """A document could not be ingested; ``source`` names it."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class UnsupportedFileError(DocumentError):
    """No loader handles this file type."""


class DocumentLoadError(DocumentError):
    """The file exists but could not be read or parsed."""


class NoTextError(DocumentLoadError):
    """The file was read, and holds nothing to index (empty, a table of contents, only images)."""


class EmbeddingError(KnowledgeError):
    """The embedding model could not be loaded or run."""


class VectorStoreError(KnowledgeError):
    """The vector store (Qdrant Edge or a Qdrant server) failed or is misconfigured."""


class AgentError(KbotError):
    """Something went wrong while answering."""


class ModelError(AgentError):
    """The chat model could not be loaded, reached, or did not answer in time."""


class AdapterError(AgentError):
    """A LoRA adapter is unknown, missing on disk, or does not fit the base model."""


class ChatError(KbotError):
    """A chat platform (Slack, Teams) refused or failed a call; ``code`` is the platform's name
    for the refusal (Slack's ``error``, Teams' error code), "" when it never answered."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class FeedbackError(KbotError):
    """Feedback names an answer kbot does not know, or is malformed."""


# What a chat user may read about a failure: hosts, URLs and causes stay in the log.
_PUBLIC_REASONS: tuple[tuple[type[KbotError], str], ...] = (
    (StoreError, "my database is not available right now."),
    (ChatError, "the chat service did not accept my reply."),
    (VectorStoreError, "my document search is not available right now."),
    (EmbeddingError, "my document search is not available right now."),
    (AgentError, "the language model is not available right now."),
)


def public_reason(exc: KbotError) -> str:
    """The failure in words for the person asking; the error's own sentence where it is theirs to act on."""
    return next((text for kind, text in _PUBLIC_REASONS if isinstance(exc, kind)), str(exc))
