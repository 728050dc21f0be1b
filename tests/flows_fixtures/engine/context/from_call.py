import flowhost


def from_call() -> dict:
    ctx = flowhost.run_context()
    return {"run_id": ctx.run_id, "app_id": ctx.app_id, "search": ctx.params_for("search")}
