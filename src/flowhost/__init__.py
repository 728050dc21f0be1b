"""flowhost: serve LLM application flows as production HTTP services."""

from flowhost.engine.context import RunContext, run_context
from flowhost.nodes.python import tool

__version__ = "0.1.0"

__all__ = ["RunContext", "__version__", "run_context", "tool"]
