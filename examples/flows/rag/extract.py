"""The no-LLM answer: the best retrieved passages, with their sources."""


def extract(question: str, passages: list) -> str:
    if not passages:
        return "No passage in the knowledge base matches this question."
    lines = [f"[{i}] {p['text']} ({p['doc_name']})" for i, p in enumerate(passages[:3], 1)]
    return "\n".join(lines)
