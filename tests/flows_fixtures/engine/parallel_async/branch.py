from flowhost import RunContext


async def branch(me: str, other: str, ctx: RunContext) -> str:
    started = ctx.extra["started"]
    started[me].set()
    await started[other].wait()
    return me
