def prepare(question: str) -> str:
    return question.strip()
