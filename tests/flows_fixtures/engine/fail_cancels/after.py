def after(a: str, b: str) -> str:
    return a + b
