import flowhost


def by_call() -> dict:
    ctx = flowhost.run_context()
    return {"params": ctx.user_defined_params, "token_tools": sorted(ctx.user_defined_tokens)}
