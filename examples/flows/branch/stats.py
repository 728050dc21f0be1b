from flowhost import tool


@tool
def stats(question: str) -> dict:
    return {"words": len(question.split())}
