def describe(question: str, count: int, ratio: float, flag: bool, tags: list, meta: dict) -> dict:
    values = {"question": question, "count": count, "ratio": ratio, "flag": flag}
    values.update(tags=tags, meta=meta)
    return {k: [type(v).__name__, v] for k, v in values.items()}
