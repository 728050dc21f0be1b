# Written for promptflow: flowhost provides `promptflow.core.tool` when promptflow is absent.
from promptflow.core import tool


@tool
def classify(question: str) -> dict:
    text = question.strip()
    return {"is_question": text.endswith(("?", "？")), "length": len(text)}
