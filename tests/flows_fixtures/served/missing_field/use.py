def use(value: str) -> str:
    return value
