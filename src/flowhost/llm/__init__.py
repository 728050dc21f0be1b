"""OpenAI-compatible chat and embeddings through the ``openai`` SDK."""

from flowhost.llm.client import ChatChunk, LLMClient
from flowhost.llm.connections import Connection, ConnectionRegistry, LLMNotConfigured

__all__ = ["ChatChunk", "Connection", "ConnectionRegistry", "LLMClient", "LLMNotConfigured"]
