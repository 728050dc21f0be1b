from flowhost import run_context


def authorize() -> str:
    return "Bearer " + run_context().token_for("weather").get("user_token", "")
