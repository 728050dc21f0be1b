def summarize(topic: str) -> str:
    return f"about {topic}"
