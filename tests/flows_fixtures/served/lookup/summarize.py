def summarize(second: str, country: str) -> str:
    return f"{second} in {country}"
