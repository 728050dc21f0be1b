import time
from collections.abc import Iterator

from flowhost import tool


@tool
def slow(question: str) -> Iterator[str]:
    for i in range(int(question)):
        time.sleep(0.5)
        yield f"piece{i} "
