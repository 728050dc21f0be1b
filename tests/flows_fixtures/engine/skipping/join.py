def join(a: str | None, b: str | None) -> str:
    return f"a={a} b={b}"
