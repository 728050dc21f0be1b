from flowhost import tool


@tool
def join(from_question: str | None, from_statement: str | None, words: int) -> str:
    """Exactly one branch ran; the other's output reads as None."""
    return f"{from_question or from_statement} ({words} words)"
