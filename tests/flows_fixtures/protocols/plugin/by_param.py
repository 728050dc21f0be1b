import hashlib

from flowhost import RunContext


def by_param(question: str, seen: dict, header: str, ctx: RunContext) -> dict:
    """Proves the token arrived without putting it into the flow's output."""
    token = ctx.token_for("weather").get("user_token", "")
    return {
        "question": question,
        "by_call": seen,
        "weather_params": ctx.params_for("weather"),
        "weather_digest": hashlib.sha256(token.encode()).hexdigest(),
        "header_matches": header == f"Bearer {token}",
    }
