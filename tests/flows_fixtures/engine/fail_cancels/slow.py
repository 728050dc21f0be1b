import asyncio

from flowhost import RunContext


async def slow(ctx: RunContext) -> str:
    ctx.extra["slow_started"].set()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ctx.extra["cancelled"].append("slow")
        raise
    return "slow"
