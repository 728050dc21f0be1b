from flowhost import RunContext


async def boom(ctx: RunContext) -> str:
    await ctx.extra["slow_started"].wait()
    raise ValueError("boom: the value is bad")
