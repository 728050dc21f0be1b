from flowhost import tool


@tool
def answer_question(question: str) -> str:
    return f"You asked: {question.strip()}"
