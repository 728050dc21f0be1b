"""Long-term memory: facts and preferences extracted from user messages, recalled by relevance.

A memory (``memory_id``) owns memory nodes. A run given a ``memory_id`` first recalls the nodes
most relevant to the user's message (embedding similarity, then recency) for its LLM nodes; in
the background, an LLM call extracts new facts from the message and adds them, updates the node
they restate, or ignores them when they carry nothing new.
"""

from flowhost.memory.service import MemoryNode, MemoryRecord, MemoryService

__all__ = ["MemoryNode", "MemoryRecord", "MemoryService"]
