import asyncio
import re

from flowhost import tool


@tool
async def echo(question: str, chat_history: list | None = None) -> str:
    """As examples/flows/echo, after a delay that grows with the turn's index in the flood, so
    that turns are still in flight whenever the server is killed."""
    index = re.search(r"q(\d+)$", question)
    await asyncio.sleep(min(1.0, int(index.group(1)) * 0.005) if index else 0.0)
    turn = len(chat_history or []) + 1
    return f"echo: {question}" if turn == 1 else f"echo: {question} (turn {turn})"
