"""Any OpenAI-compatible chat server (vLLM in production) over HTTP, streaming by SSE.

With vLLM started as ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, an adapter
is loaded at runtime by ``POST /v1/load_lora_adapter {lora_name, lora_path}`` (the path as the
server sees it) and chosen per request by passing its name as ``model``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import httpx

from agent.backends import AdapterRef, Message
from kbot.errors import AdapterError, ModelError
from kbot.urls import shown_url


class OpenAIBackend:
    def __init__(
        self, base_url: str, *, model: str, api_key: str | None = None, timeout: float = 120.0
    ) -> None:
        self._base = base_url.rstrip("/")
        self._shown = shown_url(self._base)  # for messages: credentials in the URL masked
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self._loaded: set[str] = set()

    @property
    def base_model(self) -> str:
        return self._model

    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Load an adapter into the server (idempotent: "already loaded" counts as success)."""
        body = {"lora_name": adapter.version, "lora_path": str(adapter.path)}
        try:
            response = await self._client.post(f"{self._base}/load_lora_adapter", json=body)
        except httpx.HTTPError as exc:
            raise ModelError(f"Cannot reach the model server at {self._shown}: {exc}") from exc
        if response.status_code >= 400 and "already" not in response.text.lower():
            raise AdapterError(
                f"The model server refused adapter {adapter.version} "
                f"({response.status_code}): {response.text[:300]}"
            )
        self._loaded.add(adapter.version)

    async def stream(
        self, messages: Sequence[Message], *, adapter: AdapterRef | None, max_new_tokens: int
    ) -> AsyncIterator[str]:
        if adapter is not None and adapter.version not in self._loaded:
            await self.load_adapter(adapter)
        body = {
            "model": adapter.version if adapter else self._model,
            "messages": list(messages),
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "stream": True,
        }
        try:
            for attempt in (1, 2):
                async with self._client.stream(
                    "POST", f"{self._base}/chat/completions", json=body
                ) as response:
                    if response.status_code == 404 and adapter is not None and attempt == 1:
                        # The server restarted and forgot its runtime-loaded adapters: load it again.
                        await response.aread()
                        self._loaded.discard(adapter.version)
                        await self.load_adapter(adapter)
                        continue
                    if response.status_code >= 400:
                        detail = (await response.aread()).decode(errors="replace")[:300]
                        raise ModelError(f"The model server answered {response.status_code}: {detail}")
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        if text := _delta_text(data):
                            yield text
                    return
        except httpx.HTTPError as exc:
            raise ModelError(f"The model server at {self._shown} failed: {exc!r}") from exc

    async def warm_up(self) -> None:
        """Nothing to load here: the model lives in the server."""

    async def ready(self) -> None:
        """The server answers its model list (cheap: no tokens generated)."""
        try:
            response = await self._client.get(f"{self._base}/models", timeout=2.0)
        except httpx.HTTPError as exc:
            raise ModelError(f"The model server at {self._shown} failed: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise ModelError(f"The model server at {self._shown} answered {response.status_code}")

    async def first_tokens(self, text: str, limit: int) -> str:
        """Estimated (:func:`estimated_first_tokens`): the model's tokenizer lives in the server."""
        return estimated_first_tokens(text, limit)

    async def close(self) -> None:
        await self._client.aclose()


def estimated_first_tokens(text: str, limit: int) -> str:
    """``text`` cut where an estimate of its tokens reaches ``limit``, without the tokenizer.

    The model's tokenizer lives in the server, so this estimates: every non-ASCII character is
    one token (CJK characters are about one each in the vocabularies of the models vLLM usually
    serves — Qwen, Llama 3 — and accented letters or emoji rarely more), and ASCII is one token
    per 4 characters (what English text takes). It is an estimate, not a bound: a model whose
    vocabulary lacks CJK (SmolLM2: ~2.5 tokens per Chinese character) makes more, within a small
    factor — together with the character cap, the prompt stays bounded. Exact counts would
    cost a request per question (vLLM's ``/tokenize``, not part of the OpenAI API).
    """
    quarters = 0  # in quarter tokens, so ASCII counts 1/4 each without floats
    for index, char in enumerate(text):
        quarters += 1 if char.isascii() else 4
        if quarters > limit * 4:
            return text[:index]
    return text


def _delta_text(data: str) -> str:
    try:
        chunk = json.loads(data)
        return str(chunk["choices"][0]["delta"].get("content") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelError(f"The model server sent a malformed stream chunk: {data[:200]}") from exc
