"""True when an LLM connection is configured (env or connections.yaml), else False."""

import os
from pathlib import Path


def has_llm() -> bool:
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("DASHSCOPE_API_KEY"):
        return True
    here = Path(__file__).resolve().parent
    return (here / "connections.yaml").is_file() or (here.parent / "connections.yaml").is_file()
