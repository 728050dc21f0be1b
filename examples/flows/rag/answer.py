"""Pick the LLM's answer when it ran, else the extracted passages."""


def answer(generated: str | None = None, extracted: str | None = None) -> str:
    return generated if generated is not None else (extracted or "")
