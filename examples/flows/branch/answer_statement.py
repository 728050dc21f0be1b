from flowhost import tool


@tool
def answer_statement(question: str) -> str:
    return f"You said: {question.strip()}"
