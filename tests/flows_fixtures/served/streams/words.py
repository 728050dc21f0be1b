from collections.abc import Iterator


def words(question: str) -> Iterator[str]:
    """Yield the question word by word, keeping the spaces."""
    for i, word in enumerate(question.split()):
        yield word if i == 0 else " " + word
