def upper(question: str) -> str:
    return question.upper()
