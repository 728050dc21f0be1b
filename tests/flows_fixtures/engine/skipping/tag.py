def tag(text: str) -> str:
    return f"tag:{text}"
