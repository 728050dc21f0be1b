def say(text: str) -> str:
    return text


def shout(text: str) -> str:
    return text.upper()
