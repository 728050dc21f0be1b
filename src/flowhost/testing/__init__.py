"""Test helpers that ship with flowhost: a fake OpenAI-compatible LLM server.

The names are loaded lazily so that ``python -m flowhost.testing.fake_llm`` does not import
the module twice (runpy warns when a package's ``__init__`` already imported it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowhost.testing.fake_llm import Disconnect as Disconnect
    from flowhost.testing.fake_llm import FakeLLM as FakeLLM
    from flowhost.testing.fake_llm import RecordedRequest as RecordedRequest
    from flowhost.testing.fake_llm import Reply as Reply

__all__ = ["Disconnect", "FakeLLM", "RecordedRequest", "Reply"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("flowhost.testing.fake_llm"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
