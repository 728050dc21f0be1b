def join(a: str, b: str) -> str:
    return f"{a}+{b}"
