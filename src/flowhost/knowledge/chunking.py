"""Split sections into chunks: by structure (sections, paragraphs), then by sentences.

Sentences end at Chinese punctuation (``。！？；…``) or at English ``. ! ? ;`` followed by a space
or the end of the text. Sentences are packed into chunks of at most ``size`` characters; each
chunk after the first repeats the previous chunk's last sentences, up to ``overlap`` characters.
A single sentence longer than ``size`` is cut into ``size``-character pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowhost.knowledge.parsing import Section

__all__ = ["Piece", "chunk_sections", "split_sentences"]

# The end of a sentence: a run of closing punctuation (plus closing quotes), or a line break.
# An ASCII run counts only where it starts (not right after another terminator), is taken
# whole (possessive) and is followed by a space or the end: a sentence pattern with a lazy
# prefix retried the run from each of its characters, quadratic in a long run ("....x": 40 KB
# of dots held the GIL for half a minute).
_END = re.compile(r"""[。！？；…]+[」』”’）)]*|(?<![.!?;])[.!?;]++[\"')\]]*+(?=\s|$)|\n""")


@dataclass(frozen=True, slots=True)
class Piece:
    """One chunk: its text, the section title it came from and its page (PDF)."""

    text: str
    title: str
    page: int | None


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace at the ends stripped, empty ones dropped)."""
    out: list[str] = []
    pos = 0
    for m in _END.finditer(text):
        out.append(text[pos : m.end()])
        pos = m.end()
    out.append(text[pos:])
    return [s.strip() for s in out if s.strip()]


def _joiner(a: str, b: str) -> str:
    # No space between CJK sentences; a space between Latin ones.
    return "" if (a and ord(a[-1]) > 0x2E7F) or (b and ord(b[0]) > 0x2E7F) else " "


def _join(parts: list[str]) -> str:
    text = ""
    for p in parts:
        text = p if not text else text + _joiner(text, p) + p
    return text


def _pack(sentences: list[str], size: int, overlap: int) -> list[str]:
    units: list[str] = []
    for s in sentences:
        while len(s) > size:
            units.append(s[:size])
            s = s[size - overlap if overlap < size else size :]
        if s:
            units.append(s)
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for unit in units:
        if current and length + len(unit) + 1 > size:
            chunks.append(_join(current))
            carried: list[str] = []
            kept = 0
            for prev in reversed(current):
                if kept + len(prev) > overlap or kept + len(prev) + len(unit) + 1 > size:
                    break
                carried.insert(0, prev)
                kept += len(prev) + 1
            current, length = carried, kept
        current.append(unit)
        length += len(unit) + 1
    if current:
        chunks.append(_join(current))
    return chunks


def chunk_sections(sections: list[Section], *, size: int, overlap: int) -> list[Piece]:
    """Chunks of every section, in document order. ``overlap`` must be below ``size``."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("chunk size must be positive and overlap smaller than size")
    pieces: list[Piece] = []
    for section in sections:
        paragraphs = [p for p in re.split(r"\n\s*\n", section.text) if p.strip()]
        sentences: list[str] = []
        for para in paragraphs:
            sentences.extend(split_sentences(para))
        for text in _pack(sentences, size, overlap):
            pieces.append(Piece(text, section.title, section.page))
    return pieces
