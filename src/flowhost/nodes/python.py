"""``type: python`` nodes: a function in the flow folder.

The function is chosen as promptflow does: the node's ``function`` key if given, else the one
function decorated with ``@tool`` (flowhost's, or promptflow's), else the module's only public
function. Sync functions run in a worker thread; generators and async generators stream their
items as deltas. A parameter annotated ``RunContext`` receives the run context.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import os
import sys
import threading
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from flowhost.engine.context import RunContext
from flowhost.exceptions import FlowDefinitionError
from flowhost.nodes.base import NodeRuntime

__all__ = ["PythonNode", "tool"]

F = TypeVar("F", bound=Callable[..., Any])
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

    async def run(self, inputs: dict[str, Any], rt: NodeRuntime) -> Any:
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
        return await asyncio.to_thread(self.fn, **kwargs)

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
