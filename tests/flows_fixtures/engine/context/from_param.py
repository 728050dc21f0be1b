from __future__ import annotations

from flowhost import RunContext


async def from_param(ctx: RunContext) -> dict:
    return {"session_id": ctx.session_id, "user_id": ctx.user_id, "token": ctx.token_for("search")}
