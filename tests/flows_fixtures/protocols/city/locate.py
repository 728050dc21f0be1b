def locate(question: str, city: str, chat_history: list) -> str:
    return f"{city}: {question} (turn {len(chat_history) + 1})"
