"""The model-backend port: a chat model that streams tokens and can switch LoRA adapters.

Implementations: :class:`~agent.backends.local.LocalBackend` (transformers + peft in this
process, CUDA when available) and :class:`~agent.backends.openai.OpenAIBackend` (any
OpenAI-compatible server; with vLLM the adapter is chosen per request by model name and loaded
at runtime through ``/v1/load_lora_adapter``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypedDict


class Message(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter to answer with: its version (also its served name) and its files."""

    version: str
    path: Path


class ModelBackend(Protocol):
    @property
    def base_model(self) -> str: ...

    def stream(
        self, messages: Sequence[Message], *, adapter: AdapterRef | None, max_new_tokens: int
    ) -> AsyncIterator[str]:
        """Yield the answer's text as it is generated (greedy decoding, so answers are reproducible)."""
        ...

    async def first_tokens(self, text: str, limit: int) -> str:
        """``text`` cut to its first ``limit`` tokens of this model; unchanged when it fits."""
        ...

    async def warm_up(self) -> None:
        """Load what the first answer would otherwise load (a server calls this before serving)."""
        ...

    async def ready(self) -> None:
        """Raise :class:`~kbot.errors.ModelError` if the model cannot answer now (``/readyz``)."""
        ...

    async def close(self) -> None: ...
