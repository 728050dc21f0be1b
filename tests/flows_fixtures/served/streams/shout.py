import asyncio
from collections.abc import AsyncIterator


async def shout(question: str) -> AsyncIterator[str]:
    for i, word in enumerate(question.split()):
        await asyncio.sleep(0)
        yield word.upper() if i == 0 else " " + word.upper()
