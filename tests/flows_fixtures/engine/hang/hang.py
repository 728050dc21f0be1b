import asyncio

from flowhost import RunContext


async def hang(ctx: RunContext) -> str:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ctx.extra["cancelled"].append("hang")
        raise
    return "never"
