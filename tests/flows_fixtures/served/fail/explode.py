def explode(text: str) -> str:
    raise ValueError(f"the answer to {text!r} is unknowable")
