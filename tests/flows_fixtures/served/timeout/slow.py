import asyncio


async def slow(question: str) -> str:
    await asyncio.sleep(60)
    return question
