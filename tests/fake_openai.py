"""A local stand-in for an OpenAI-compatible server (vLLM's API): it records every request and
streams a canned answer as server-sent events, like the real server. With ``echo`` it answers
with its whole prompt instead, so whatever reached the model shows in the answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.local_server import serve_locally


@dataclass
class FakeOpenAI:
    answer: str = "Sick leave is 10 days per year [1]."
    delay_s: float = 0.0
    gate: asyncio.Event | None = None  # when set: each answer waits until the test opens it
    echo: bool = False
    whole: bool = False  # send the answer as one chunk (a server that buffers), not word by word
    token_delay_s: float = 0.0  # between two pieces of the answer: a model writing slowly
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    adapters: set[str] = field(default_factory=set)
    authorizations: set[str] = field(default_factory=set)  # Authorization headers seen
    url: str = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("chat", body))
        self.authorizations.add(request.headers.get("Authorization", ""))
        if body["model"] not in {"served-base", *self.adapters}:
            return web.json_response({"error": {"message": f"model {body['model']} not found"}}, status=404)
        await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.echo:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in body["messages"])
            pieces = [text[i : i + 1000] for i in range(0, len(text), 1000)]
        elif self.whole:
            pieces = [self.answer]
        else:
            pieces = [word + " " for word in self.answer.split(" ")]
        for i, piece in enumerate(pieces):
            if i and self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def load_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("load_lora_adapter", body))
        if body["lora_name"] in self.adapters:
            return web.Response(
                status=400, text=f"The lora adapter '{body['lora_name']}' has already been loaded."
            )
        self.adapters.add(body["lora_name"])
        return web.Response(text="Success")


@asynccontextmanager
async def fake_openai_server(**kwargs: Any) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(**kwargs)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/v1/load_lora_adapter", fake.load_lora)
    async with serve_locally(app) as url:
        fake.url = f"{url}/v1"
        yield fake
