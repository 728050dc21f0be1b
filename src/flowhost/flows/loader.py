"""Load a flow folder (``flow.dag.yaml`` + code + templates) into a validated, runnable Flow."""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from flowhost.exceptions import FlowDefinitionError
from flowhost.flows.graph import topological_order
from flowhost.flows.spec import FlowSpec, NodeSpec, Reference, parse_reference
from flowhost.nodes.base import NodeImpl
from flowhost.nodes.llm import LLMNode, PromptNode, split_llm_inputs
from flowhost.nodes.python import PythonNode, load_function
from flowhost.nodes.template import PromptTemplate, TemplateSyntaxError

__all__ = ["CompiledNode", "Flow", "NodeFactory", "find_flow_file", "load_flow"]

FLOW_FILES = ("flow.dag.yaml", "flow.dag.yml", "flow.flex.yaml")

# Extra node types (knowledge_retrieval, ...) register a factory here:
# factory(spec, flow_dir, file) -> NodeImpl
NodeFactory = Any
NODE_FACTORIES: dict[str, NodeFactory] = {}
# Built-in node types whose module registers its factory when imported: imported on first use,
# so every way of loading a flow (serve, run, validate, tests) knows them.
_FACTORY_MODULES = {"knowledge_retrieval": "flowhost.knowledge.node"}


@dataclass(frozen=True, slots=True)
class CompiledNode:
    spec: NodeSpec
    impl: NodeImpl
    inputs: dict[str, Reference | Any]
    deps: frozenset[str]
    activate_when: Reference | Any = None
    node_refs: tuple[Reference, ...] = ()  # the inputs that reference other nodes

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Flow:
    """A validated flow. ``nodes`` is in a topological order."""

    name: str
    path: Path
    spec: FlowSpec
    nodes: dict[str, CompiledNode]
    outputs: dict[str, Reference | Any]
    chat_input: str | None = None
    chat_history: str | None = None
    chat_output: str | None = None
    streaming_outputs: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_chat(self) -> bool:
        return self.chat_input is not None

    @functools.cached_property
    def waited_for(self) -> frozenset[str]:
        """The nodes that other nodes reference (only those need an event to wait on)."""
        return frozenset(dep for n in self.nodes.values() for dep in n.deps)

    @functools.cached_property
    def echoes(self) -> dict[str, list[str]]:
        """Streaming node -> the flow outputs that echo its deltas."""
        echo: dict[str, list[str]] = {}
        for out, ref in self.outputs.items():
            if out in self.streaming_outputs:
                echo.setdefault(ref.source, []).append(out)
        return echo

    @functools.cached_property
    def outputs_of(self) -> dict[str | None, list[str]]:
        """Node (None: the inputs) -> the flow outputs it completes, in the flow's order."""
        by_source: dict[str | None, list[str]] = {}
        for out, ref in self.outputs.items():
            by_source.setdefault(None if ref.is_input else ref.source, []).append(out)
        return by_source


def find_flow_file(folder: Path) -> Path | None:
    for name in FLOW_FILES[:2]:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_spec(file: Path) -> FlowSpec:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FlowDefinitionError(f"invalid YAML: {exc}", file=str(file)) from exc
    if not isinstance(data, dict):
        raise FlowDefinitionError("expected a mapping at the top level", file=str(file))
    try:
        return FlowSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        node = None
        if err["loc"][:1] == ("nodes",) and len(err["loc"]) > 1 and isinstance(err["loc"][1], int):
            raw = data.get("nodes", [])[err["loc"][1]]
            node = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(node, str) and len(err["loc"]) > 2:  # name the field within the node
                loc = ".".join(str(p) for p in err["loc"][2:])
        raise FlowDefinitionError(err["msg"], file=str(file), node=node, field=loc) from exc


def _source_path(spec: NodeSpec, folder: Path, file: str) -> Path:
    if spec.source is None or not spec.source.path:
        raise FlowDefinitionError("needs source.path", file=file, node=spec.name, field="source")
    path = (folder / spec.source.path).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise FlowDefinitionError("source.path leaves the flow folder", file=file, node=spec.name)
    if not path.is_file():
        raise FlowDefinitionError(
            f"source file {spec.source.path!r} not found",
            file=file,
            node=spec.name,
            field="source.path",
        )
    return path


def _template(spec: NodeSpec, folder: Path, file: str) -> PromptTemplate:
    path = _source_path(spec, folder, file)
    try:
        return PromptTemplate.from_file(path)
    except TemplateSyntaxError as exc:
        raise FlowDefinitionError(
            f"template error line {exc.lineno}: {exc.message}",
            file=str(path),
            node=spec.name,
            field="source.path",
        ) from exc


def _build_impl(spec: NodeSpec, folder: Path, file: str) -> NodeImpl:
    if spec.type == "python":
        path = _source_path(spec, folder, file)
        fn = load_function(path, node=spec.name, function=spec.function)
        return PythonNode(fn, node=spec.name, input_names=set(spec.inputs), file=str(path))
    if spec.type == "llm":
        if spec.api not in (None, "chat"):
            raise FlowDefinitionError(
                f"api {spec.api!r} is not supported (only chat)",
                file=file,
                node=spec.name,
                field="api",
            )
        _params, _vars = split_llm_inputs(spec.inputs)
        return LLMNode(_template(spec, folder, file), connection=spec.connection)
    if spec.type == "prompt":
        return PromptNode(_template(spec, folder, file))
    factory = NODE_FACTORIES.get(spec.type)
    if factory is None and spec.type in _FACTORY_MODULES:
        try:
            importlib.import_module(_FACTORY_MODULES[spec.type])
        except ImportError as exc:
            raise FlowDefinitionError(
                f"node type {spec.type!r} cannot be loaded: {exc}",
                file=file,
                node=spec.name,
                field="type",
            ) from exc
        factory = NODE_FACTORIES.get(spec.type)
    if factory is None:
        raise FlowDefinitionError(
            f"node type {spec.type!r} is not available", file=file, node=spec.name, field="type"
        )
    impl: NodeImpl = factory(spec, folder, file)
    return impl


def _check_ref(
    ref: Reference, spec: FlowSpec, names: set[str], file: str, node: str | None, fld: str
) -> None:
    if ref.is_input:
        if ref.name not in spec.inputs:
            raise FlowDefinitionError(
                f"unknown flow input in {ref}", file=file, node=node, field=fld
            )
    elif ref.source not in names:
        raise FlowDefinitionError(f"unknown node in {ref}", file=file, node=node, field=fld)
    elif ref.name != "output":
        raise FlowDefinitionError(
            f"{ref}: a node reference must be ${{node.output}} or ${{node.output.field}}",
            file=file,
            node=node,
            field=fld,
        )


# one ${...} and nothing else: meant as a reference (text around or between references is a
# literal, as in promptflow)
_ONE_REF = re.compile(r"^\$\{[^{}]*\}$")


def _reference(value: Any, file: str, node: str | None, fld: str) -> Reference | None:
    """The reference ``value`` holds; None for a literal. A malformed ``${...}`` is an error."""
    ref = parse_reference(value)
    if ref is None and isinstance(value, str) and _ONE_REF.match(value.strip()):
        raise FlowDefinitionError(
            f"{value!r} is not a valid reference; write ${{inputs.<name>}}, "
            "${<node>.output} or ${<node>.output.<field>}",
            file=file,
            node=node,
            field=fld,
        )
    return ref


def load_flow(folder: Path, *, name: str | None = None) -> Flow:
    """Load and validate the flow in ``folder``. Raises FlowDefinitionError naming file/node/field."""
    folder = folder.resolve()
    file_path = find_flow_file(folder)
    if file_path is None:
        raise FlowDefinitionError("no flow.dag.yaml in the folder", file=str(folder))
    file = str(file_path)
    spec = _read_spec(file_path)
    names = [n.name for n in spec.nodes]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise FlowDefinitionError(
            f"duplicate node names {sorted(dupes)}", file=file, node=min(dupes), field="name"
        )
    nameset = set(names)
    compiled: dict[str, CompiledNode] = {}
    deps: dict[str, set[str]] = {}
    for node in spec.nodes:
        inputs: dict[str, Any] = {}
        nd: set[str] = set()
        for key, value in node.inputs.items():
            ref = _reference(value, file, node.name, f"inputs.{key}")
            if ref is not None:
                _check_ref(ref, spec, nameset, file, node.name, f"inputs.{key}")
                if not ref.is_input:
                    nd.add(ref.source)
            inputs[key] = ref if ref is not None else value
        when: Any = None
        if node.activate is not None:
            when = _reference(node.activate.when, file, node.name, "activate.when")
            if when is not None:
                _check_ref(when, spec, nameset, file, node.name, "activate.when")
                if not when.is_input:
                    nd.add(when.source)
            else:
                when = node.activate.when
        if node.name in nd:
            raise FlowDefinitionError(
                "a node cannot reference itself", file=file, node=node.name, field="inputs"
            )
        deps[node.name] = nd
        compiled[node.name] = CompiledNode(
            spec=node,
            impl=_build_impl(node, folder, file),
            inputs=inputs,
            deps=frozenset(nd),
            activate_when=when,
            node_refs=tuple(
                v for v in inputs.values() if isinstance(v, Reference) and not v.is_input
            ),
        )
    try:
        order = topological_order(deps)
    except ValueError as exc:
        first, after = str(exc).split(" -> ")[:2]
        fld = next(
            (
                f"inputs.{k}"
                for k, v in compiled[first].inputs.items()
                if isinstance(v, Reference) and v.source == after
            ),
            "activate.when",
        )
        raise FlowDefinitionError(
            f"the nodes form a cycle: {exc}", file=file, node=first, field=fld
        ) from None
    outputs: dict[str, Any] = {}
    streaming: set[str] = set()
    for out_name, out in spec.outputs.items():
        ref = parse_reference(out.reference)
        if ref is None:
            raise FlowDefinitionError(
                f"reference {out.reference!r} is not a ${{...}} reference",
                file=file,
                field=f"outputs.{out_name}.reference",
            )
        _check_ref(ref, spec, nameset, file, None, f"outputs.{out_name}.reference")
        outputs[out_name] = ref
        if not ref.is_input and not ref.path and compiled[ref.source].impl.streaming:
            streaming.add(out_name)
    chat_input = next((k for k, v in spec.inputs.items() if v.is_chat_input), None)
    chat_history = next((k for k, v in spec.inputs.items() if v.is_chat_history), None)
    chat_output = next((k for k, v in spec.outputs.items() if v.is_chat_output), None)
    if chat_input is not None and chat_output is None and len(spec.outputs) == 1:
        chat_output = next(iter(spec.outputs))
    return Flow(
        name=name or folder.name,
        path=folder,
        spec=spec,
        nodes={n: compiled[n] for n in order},
        outputs=outputs,
        chat_input=chat_input,
        chat_history=chat_history,
        chat_output=chat_output,
        streaming_outputs=frozenset(streaming),
    )
