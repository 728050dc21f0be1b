"""``type: python`` nodes: a function in the flow folder.

The function is chosen as promptflow does: the node's ``function`` key if given, else the one
function decorated with ``@tool`` (flowhost's, or promptflow's), else the module's only public
function. Sync functions run in a worker thread, except quick ones (see ``InlinePolicy``);
generators and async generators stream their items as deltas. A parameter annotated
``RunContext`` receives the run context.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

from flowhost.engine.context import RunContext
from flowhost.exceptions import FlowDefinitionError
from flowhost.nodes.base import NodeRuntime

__all__ = ["InlinePolicy", "PythonNode", "tool"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("flowhost.nodes")
try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)  # Linux
except ImportError:  # Windows
    _RUSAGE_THREAD = None
_import_lock = threading.Lock()
_DONE = object()
_MODULE_PREFIX = "flowhost_flow_"  # node modules: one per source file, never shadowed


def tool(func: F | None = None, **_: Any) -> Any:
    """Mark the function a python node runs (promptflow's ``@tool``, accepted the same way)."""

    def mark(f: F) -> F:
        f.__flowhost_tool__ = True  # type: ignore[attr-defined]
        return f

    return mark(func) if func is not None else mark


def _install_promptflow_shim() -> None:
    """Let flows written for promptflow import ``tool`` when promptflow is not installed."""
    if "promptflow" in sys.modules or importlib.util.find_spec("promptflow") is not None:
        return
    root = types.ModuleType("promptflow")
    core = types.ModuleType("promptflow.core")
    root.tool = core.tool = tool  # type: ignore[attr-defined]
    root.core = core  # type: ignore[attr-defined]
    root.__path__ = []
    sys.modules["promptflow"], sys.modules["promptflow.core"] = root, core


# folder + os.sep -> the modules imported from it (by a flow's code: `import utils`)
_folder_modules: dict[str, dict[str, types.ModuleType]] = {}


def _folder_of(module: types.ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return None
    return max((f for f in _folder_modules if file.startswith(f)), key=len, default=None)


@contextlib.contextmanager
def _flow_imports(folder: Path) -> Iterator[None]:
    """Import a flow's code against its own folder's modules (call with ``_import_lock`` held).

    Served flows may each have a helper module of the same name (``utils.py``), but
    ``sys.modules`` holds one ``utils``: while this folder's code is imported, the modules of other
    flow folders leave ``sys.modules`` and this folder's come back, so ``import utils`` finds this
    folder's file. Module-level imports then keep their own module for good.
    """
    prefix = str(folder) + os.sep
    mine = _folder_modules.setdefault(prefix, {})
    for name, mod in list(sys.modules.items()):
        owner = _folder_of(mod)
        if owner is not None and owner != prefix and not name.startswith(_MODULE_PREFIX):
            _folder_modules[owner][name] = mod
            del sys.modules[name]
    sys.modules.update(mine)
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        for name, mod in list(sys.modules.items()):
            if _folder_of(mod) == prefix and not name.startswith(_MODULE_PREFIX):
                mine[name] = mod


def load_function(path: Path, *, node: str, function: str | None) -> Callable[..., Any]:
    if not path.is_file():
        raise FlowDefinitionError(
            "source file not found", file=str(path), node=node, field="source.path"
        )
    _install_promptflow_shim()
    mod_name = f"{_MODULE_PREFIX}{abs(hash(str(path.resolve())))}_{path.stem}"
    with _import_lock:
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise FlowDefinitionError("cannot import", file=str(path), node=node)
            module = importlib.util.module_from_spec(spec)
            try:
                with _flow_imports(path.parent.resolve()):
                    spec.loader.exec_module(module)
            except Exception as exc:
                raise FlowDefinitionError(
                    f"importing failed: {type(exc).__name__}: {exc}",
                    file=str(path),
                    node=node,
                    field="source.path",
                ) from exc
            sys.modules[mod_name] = module
    if function:
        fn = getattr(module, function, None)
        if not callable(fn):
            raise FlowDefinitionError(
                f"function {function!r} not found", file=str(path), node=node, field="function"
            )
        return fn  # type: ignore[no-any-return]
    funcs = [
        f
        for name, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ == mod_name and not name.startswith("_")
    ]
    tools = [f for f in funcs if getattr(f, "__flowhost_tool__", False) or hasattr(f, "__tool")]
    candidates = tools or funcs
    if len(candidates) != 1:
        names = ", ".join(sorted(f.__name__ for f in candidates)) or "none"
        raise FlowDefinitionError(
            f"cannot choose the node's function (candidates: {names}); mark one with @tool "
            "or set `function:` on the node",
            file=str(path),
            node=node,
            field="function",
        )
    return candidates[0]


def _context_param(fn: Callable[..., Any]) -> str | None:
    for p in inspect.signature(fn).parameters.values():
        ann = p.annotation
        if ann is RunContext or (isinstance(ann, str) and ann.split(".")[-1] == "RunContext"):
            return p.name
    return None


class InlinePolicy:
    """Where a sync function runs: in a worker thread, or on the event loop once it has shown
    itself quick.

    A hop to a worker thread and back costs more CPU than a small function itself (measured on
    the ``echo`` app: about a third of a request's CPU). So a function starts in the thread
    pool, where each run is measured exactly; after ``TRIAL_RUNS`` quick runs in a row it runs
    inline. An inline run is timed by the clock only (reading CPU time and context switches
    costs system calls): one that took longer than ``SLOW_S`` sends the function back to the
    thread pool, to prove itself again. Slow trial runs are strikes: ``STRIKES`` of them within
    ``WINDOW`` runs keep it in the thread pool for good. So a function that blocks holds the
    loop up once; a quick one that was merely preempted comes back after its trial runs.

    A trial run is slow when it used more than ``QUICK_S`` of CPU, or took longer than that and
    gave up the CPU by itself on the way (a voluntary context switch: it waited for I/O, a lock
    or a sleep); time lost to preemption on a busy machine does not count.
    """

    TRIAL_RUNS: Final = 20
    QUICK_S: Final = 0.0002  # a trial run up to this is quick
    SLOW_S: Final = 0.002  # an inline run beyond this goes back to the thread pool
    STRIKES: Final = 3
    WINDOW: Final = 100

    __slots__ = ("enabled", "inline", "runs", "streak", "strikes", "window_start")

    def __init__(self) -> None:
        self.enabled = True
        self.inline = False
        self.runs = self.streak = self.strikes = self.window_start = 0

    def record_inline(self, wall: float, name: str) -> None:
        if wall > self.SLOW_S:
            self.inline = False
            self.streak = 0
            # DEBUG: a preempted quick function (a throttled container) flips back and forth
            log.debug(
                "python node %s: a run took %.1f ms on the event loop; back to the thread pool",
                name,
                wall * 1000,
            )

    def record_trial(self, run: Measured, name: str) -> None:
        if not self.enabled:
            return
        self.runs += 1
        if self.runs - self.window_start >= self.WINDOW:
            self.window_start, self.strikes = self.runs, 0
        if not run.slower_than(self.QUICK_S):
            self.streak += 1
            self.inline = self.streak >= self.TRIAL_RUNS
            return
        self.streak = 0
        self.strikes += 1
        if self.strikes >= self.STRIKES:
            self.enabled = False
            log.info("python node %s: slow or blocking; it runs in the thread pool", name)


def _voluntary_switches() -> int:
    """Voluntary context switches of the calling thread so far (Linux; elsewhere 0)."""
    if _RUSAGE_THREAD is None:
        return 0
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class Measured:
    """One call of a function in a worker thread, measured there."""

    __slots__ = ("cpu", "error", "result", "voluntary", "wall")

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.result: Any = None
        self.error: Exception | None = None
        # thread_time is exact; getrusage's CPU times move in scheduler ticks
        vol0, cpu0, start = _voluntary_switches(), time.thread_time(), time.perf_counter()
        try:
            self.result = fn(**kwargs)
        except Exception as exc:  # re-raised by the node, once the run is recorded
            self.error = exc
        self.wall = time.perf_counter() - start
        self.cpu = time.thread_time() - cpu0
        # without per-thread counts, any long call counts as one that waited
        self.voluntary = _voluntary_switches() - vol0 if _RUSAGE_THREAD is not None else 1

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    def slower_than(self, limit: float) -> bool:
        return self.cpu > limit or (self.wall > limit and self.voluntary > 0)


class PythonNode:
    node_type = "python"

    def __init__(
        self, fn: Callable[..., Any], *, node: str, input_names: set[str], file: str
    ) -> None:
        self.fn = fn
        self.ctx_param = _context_param(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.is_gen = inspect.isgeneratorfunction(fn)
        self.is_agen = inspect.isasyncgenfunction(fn)
        self.streaming = self.is_gen or self.is_agen
        self.plain = not (self.is_async or self.streaming)  # a sync function returning a value
        self.node = node
        self.policy = InlinePolicy()
        sig = inspect.signature(fn)
        params = {n: p for n, p in sig.parameters.items() if n != self.ctx_param}
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = input_names - set(params)
        if unknown and not var_kw:
            raise FlowDefinitionError(
                f"inputs {sorted(unknown)} are not parameters of {fn.__name__}()",
                file=file,
                node=node,
                field="inputs",
            )
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and n not in input_names
        ]
        if missing:
            raise FlowDefinitionError(
                f"{fn.__name__}() needs inputs {missing} that the node does not set",
                file=file,
                node=node,
                field="inputs",
            )

    def inline_ready(self) -> bool:
        """A sync function that has shown itself quick (``InlinePolicy``) runs inline."""
        return self.policy.inline and self.plain

    def run_inline(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        kwargs = dict(inputs)
        if self.ctx_param:
            kwargs[self.ctx_param] = ctx
        start = time.perf_counter()
        try:
            return self.fn(**kwargs)
        finally:
            self.policy.record_inline(time.perf_counter() - start, self.node)

    async def run(self, inputs: dict[str, Any], rt: NodeRuntime) -> Any:
        if self.inline_ready():
            return self.run_inline(inputs, rt.ctx)
        kwargs = dict(inputs)
        if self.ctx_param:
            kwargs[self.ctx_param] = rt.ctx
        if self.is_agen:
            parts: list[str] = []
            async for item in self.fn(**kwargs):
                text = _as_text(item)
                parts.append(text)
                await rt.emit(text)
            return "".join(parts)
        if self.is_async:
            return await self.fn(**kwargs)
        if self.is_gen:
            return await self._run_generator(kwargs, rt)
        run = await asyncio.to_thread(Measured, self.fn, kwargs)
        self.policy.record_trial(run, self.node)
        return run.get()

    async def _run_generator(self, kwargs: dict[str, Any], rt: NodeRuntime) -> str:
        it: Iterator[Any] = await asyncio.to_thread(self.fn, **kwargs)
        parts: list[str] = []
        async for item in _iterate_in_thread(it):
            text = _as_text(item)
            parts.append(text)
            await rt.emit(text)
        return "".join(parts)


async def _iterate_in_thread(it: Iterator[Any]) -> AsyncIterator[Any]:
    while True:
        item = await asyncio.to_thread(next, it, _DONE)
        if item is _DONE:
            return
        yield item


def _as_text(item: Any) -> str:
    return item if isinstance(item, str) else str(item)
