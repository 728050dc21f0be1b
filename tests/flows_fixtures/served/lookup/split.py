def split(question: str) -> dict:
    return {"words": question.split(), "place": {"city": "Paris", "country": "France"}}
