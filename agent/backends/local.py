"""transformers + peft in this process: the embedded default, on CUDA when available.

One model is loaded once; LoRA adapters are attached to it by version on first use and switched
per request (``set_adapter``), so a newly promoted adapter is served without a restart. One
generation runs at a time: the model and its active adapter are shared state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agent.backends import AdapterRef, Message
from kbot.errors import AdapterError, ModelError

log = logging.getLogger(__name__)
# No n-gram of this many tokens is generated twice: a 135M model otherwise loops ("The answer
# is: [1]" line after line). Counted over the answer only, never the prompt, so a source can
# still be quoted word for word.
NO_REPEAT_NGRAM = 6


class LocalBackend:
    def __init__(self, model_path: str, *, name: str, device: str | None = None) -> None:
        self._path = model_path
        self._name = name
        self._device = device
        self._model: Any = None
        self._tokenizer: Any = None
        # A tokenizer of its own for cutting questions: a fast tokenizer used from two threads at
        # once (here and in generate()) can fail with "Already borrowed".
        self._counter: Any = None
        self._count_lock = threading.Lock()
        self._adapters: set[str] = set()
        self._load_lock = threading.Lock()
        self._generate_lock = asyncio.Lock()

    @property
    def base_model(self) -> str:
        return self._name

    async def stream(
        self, messages: Sequence[Message], *, adapter: AdapterRef | None, max_new_tokens: int
    ) -> AsyncIterator[str]:
        async with self._generate_lock:
            await asyncio.to_thread(self._load)
            await asyncio.to_thread(self._select_adapter, adapter)
            queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
            stop = threading.Event()
            loop = asyncio.get_running_loop()
            worker = threading.Thread(
                target=self._generate, args=(list(messages), max_new_tokens, queue, loop, stop), daemon=True
            )
            worker.start()
            try:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise ModelError(f"The local model failed while answering: {item}") from item
                    yield item
            finally:
                # Cancelled or timed out: tell generate() to stop at the next token.
                stop.set()
                await asyncio.to_thread(worker.join)

    async def warm_up(self) -> None:
        await asyncio.to_thread(self._load)

    async def ready(self) -> None:
        """In-process: ready once loaded (``kbot serve`` loads it before serving)."""
        if self._model is None:
            raise ModelError(f"The model {self._name} is not loaded yet")

    async def first_tokens(self, text: str, limit: int) -> str:
        """Counted by the model's own tokenizer (loaded on first use, without the model)."""
        return await asyncio.to_thread(self._first_tokens, text, limit)

    def _first_tokens(self, text: str, limit: int) -> str:
        with self._count_lock:
            if self._counter is None:
                from transformers import AutoTokenizer

                try:
                    self._counter = AutoTokenizer.from_pretrained(self._path)
                except (OSError, ValueError) as exc:
                    raise ModelError(
                        f"Cannot load the tokenizer of {self._name!r} from {self._path}: {exc}"
                    ) from exc
            fast = bool(self._counter.is_fast)
            # Offsets (fast tokenizers) cut the text itself, before the first token that does not
            # fit: a character split over two tokens goes whole, never decoded in half.
            encoded = self._counter(text, add_special_tokens=False, return_offsets_mapping=fast)
            ids = encoded["input_ids"]
            if len(ids) <= limit:
                return text
            if fast:
                return text[: encoded["offset_mapping"][limit][0]]
            return str(self._counter.decode(ids[:limit]))

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer

            transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._path)
                model: Any = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype)
            except (OSError, ValueError) as exc:
                raise ModelError(
                    f"Cannot load the base model {self._name!r} from {self._path}: {exc}"
                ) from exc
            self._model = model.to(device).eval()
            log.info("loaded %s on %s", self._name, device)

    def _select_adapter(self, adapter: AdapterRef | None) -> None:
        from peft import PeftModel

        if adapter is None:
            if self._adapters:
                self._model.base_model.disable_adapter_layers()
            return
        if not (adapter.path / "adapter_config.json").is_file():
            raise AdapterError(f"Adapter {adapter.version} has no files at {adapter.path}.")
        try:
            if not self._adapters:
                # The first adapter wraps the model; later ones are added beside it.
                self._model = PeftModel.from_pretrained(
                    self._model, adapter.path, adapter_name=adapter.version
                )
            elif adapter.version not in self._adapters:
                self._model.load_adapter(adapter.path, adapter_name=adapter.version)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise AdapterError(f"Adapter {adapter.version} does not load onto {self._name}: {exc}") from exc
        self._adapters.add(adapter.version)
        self._model.base_model.enable_adapter_layers()
        self._model.set_adapter(adapter.version)
        self._model.eval()

    def _generate(
        self,
        messages: list[Message],
        max_new_tokens: int,
        queue: asyncio.Queue[str | BaseException | None],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        """Runs in one worker thread: generate() pushes text to the queue as it decodes it."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextStreamer

        def put(item: str | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        class _ToQueue(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    put(text)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set()

        try:
            inputs = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self._model.device)
            with torch.inference_mode():
                self._model.generate(
                    **inputs,
                    streamer=_ToQueue(self._tokenizer, skip_prompt=True, skip_special_tokens=True),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                    logits_processor=LogitsProcessorList(
                        [_NoRepeatInAnswer(NO_REPEAT_NGRAM, int(inputs["input_ids"].shape[1]))]
                    ),
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                )
        except Exception as exc:  # noqa: BLE001 - any failure must reach the waiting answer, not vanish in a thread
            put(exc)
        else:
            put(None)

    async def close(self) -> None:
        self._model = None


class _NoRepeatInAnswer:
    """transformers' ``no_repeat_ngram_size``, over the generated tokens only (its own counts the
    prompt too, and would forbid quoting the sources)."""

    def __init__(self, n: int, prompt_length: int) -> None:
        self._n = n
        self._start = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row in range(input_ids.shape[0]):
            said = input_ids[row, self._start :].tolist()
            if len(said) < self._n:
                continue
            prefix = said[len(said) - self._n + 1 :]
            banned = [
                said[i + self._n - 1]
                for i in range(len(said) - self._n + 1)
                if said[i : i + self._n - 1] == prefix
            ]
            if banned:
                scores[row, banned] = float("-inf")
        return scores
