from flowhost import tool


@tool
def echo(question: str, chat_history: list | None = None) -> str:
    """Answer with the question; say which turn of the conversation this is."""
    turn = len(chat_history or []) + 1
    return f"echo: {question}" if turn == 1 else f"echo: {question} (turn {turn})"
