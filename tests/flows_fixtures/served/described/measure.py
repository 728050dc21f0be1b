def measure(question: str) -> dict:
    return {"length": len(question), "words": question.split()}
