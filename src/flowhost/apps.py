"""The served apps: one flow folder, or a folder of flow folders (app_id = folder name)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flowhost.exceptions import FlowDefinitionError, NotFound
from flowhost.flows.loader import Flow, find_flow_file, load_flow
from flowhost.llm.client import LLMClient
from flowhost.llm.connections import ConnectionRegistry
from flowhost.nodes.base import NodeServices

__all__ = ["App", "AppRegistry"]


@dataclass(frozen=True, slots=True)
class App:
    app_id: str
    flow: Flow
    services: NodeServices


class AppRegistry:
    def __init__(self, apps: Mapping[str, App], default_app: str) -> None:
        self.apps = dict(apps)
        self.default_app = default_app

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        default_app: str | None = None,
        llm: LLMClient | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AppRegistry:
        """Load every flow under ``path``. Raises FlowDefinitionError for the first bad flow."""
        path = path.resolve()
        env = os.environ if env is None else env
        llm = llm or LLMClient()
        if not path.is_dir():
            raise FlowDefinitionError("not a folder", file=str(path))
        if find_flow_file(path) is not None:
            folders, shared = [path], [path]
        else:
            folders = sorted(p for p in path.iterdir() if p.is_dir() and find_flow_file(p))
            shared = [path]
        if not folders:
            raise FlowDefinitionError("no flow folders (with flow.dag.yaml) found", file=str(path))
        apps: dict[str, App] = {}
        for folder in folders:
            conns = ConnectionRegistry.load([*shared, folder] if folder != path else shared, env)
            flow = load_flow(folder)
            apps[flow.name] = App(flow.name, flow, NodeServices(connections=conns, llm=llm))
        if default_app is None:
            default_app = "default" if "default" in apps else next(iter(apps))
        if default_app not in apps:
            raise FlowDefinitionError(
                f"default app {default_app!r} is not among {sorted(apps)}", file=str(path)
            )
        return cls(apps, default_app)

    def get(self, app_id: str | None) -> App:
        """The app named ``app_id`` (``None`` or ``"default"``: the default app)."""
        if app_id is None or (app_id == "default" and "default" not in self.apps):
            return self.apps[self.default_app]
        app = self.apps.get(app_id)
        if app is None:
            raise NotFound(f"app {app_id!r} not found; served apps: {', '.join(sorted(self.apps))}")
        return app
