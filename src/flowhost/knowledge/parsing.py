"""Turn an uploaded file into text sections (unstructured) or rows (structured).

Formats: ``.txt``, ``.md``, ``.html``/``.htm`` (lxml's HTML parser, libxml2), ``.pdf``
(pypdf, one section per page), ``.docx`` (python-docx, headings start sections), and for
structured bases ``.csv`` (the ``csv`` module) and ``.xlsx`` (openpyxl, first sheet). Parsing is
synchronous and CPU-bound: the job worker runs it in a process of its own (``ingest``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

__all__ = [
    "PARSE_HARD_LIMIT_S",
    "STRUCTURED_TYPES",
    "UNSTRUCTURED_TYPES",
    "ParseError",
    "Section",
    "Table",
    "file_type",
    "parse_document",
    "parse_table",
]

UNSTRUCTURED_TYPES = frozenset({"txt", "md", "html", "pdf", "docx"})
STRUCTURED_TYPES = frozenset({"csv", "xlsx"})
_ALIASES = {"htm": "html", "markdown": "md", "text": "txt"}
# Limits on what one document may become. An upload is at most --max-body-bytes, but a .docx or
# .xlsx is a zip and a PDF page can share a compressed stream: a small file can expand to
# gigabytes of text or cells (hours of embedding). Past a limit the job fails saying which.
MAX_COLUMNS = 128
MAX_ROWS = 100_000  # rows of a table (each becomes a chunk)
MAX_CELLS = 2_000_000  # rows x columns of a table
MAX_TEXT_CHARS = 10_000_000  # characters of text extracted from a document
MAX_UNZIPPED_BYTES = 100 * 1024 * 1024  # what a .docx / .xlsx (a zip) may expand to
MAX_PDF_PAGES = 5_000
PARSE_SECONDS = 120.0  # parsing one document (checked between pages, paragraphs, pieces)
# A parsing process still busy this long after its document's start is killed: the budget above
# is only checked between pieces, and a parser can be stuck inside one (ingest, processes).
PARSE_HARD_LIMIT_S = PARSE_SECONDS + 30.0
_HTML_FEED = 1_048_576  # characters the HTML parser is fed at a time (deadline checked between)


class ParseError(Exception):
    """The file cannot be read as its type; the message says why (shown as the job's reason)."""


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading (``title``); ``page`` is 1-based for PDFs."""

    text: str
    title: str = ""
    page: int | None = None


@dataclass(slots=True)
class Table:
    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)


def file_type(name: str) -> str:
    """The lower-case extension of ``name`` (aliases folded), e.g. ``"pdf"``."""
    ext = PurePath(name).suffix.lower().lstrip(".")
    return _ALIASES.get(ext, ext)


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ParseError("the file is not UTF-8 or GB18030 text")


# Linear: the title's closing #s and spaces are stripped in Python (a lazy group followed by
# optional runs, as before, backtracked cubically: a 3 KB heading line held the GIL 45 s).
_MD_HEADING = re.compile(r"(#{1,6})[ \t]+(.*)")


class _Budget:
    """What one document may still use: characters of text, and time (see the limits)."""

    __slots__ = ("chars", "deadline")

    def __init__(self) -> None:
        self.chars = MAX_TEXT_CHARS
        self.deadline = time.monotonic() + PARSE_SECONDS

    def take(self, text: str) -> str:
        self.chars -= len(text)
        if self.chars < 0:
            raise ParseError(f"the document holds more than {MAX_TEXT_CHARS:,} characters of text")
        self.check_time()
        return text

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise ParseError(f"reading the document took longer than {PARSE_SECONDS:g} s")


def _heading(line: str) -> str | None:
    m = _MD_HEADING.fullmatch(line)
    return None if m is None else m.group(2).rstrip().rstrip("#").rstrip()


def _markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    title, buf = "", list[str]()
    for line in text.splitlines():
        heading = _heading(line)
        if heading is not None:
            if "".join(buf).strip():
                sections.append(Section("\n".join(buf).strip(), title))
            title, buf = heading, []
        else:
            buf.append(line)
    if "".join(buf).strip():
        sections.append(Section("\n".join(buf).strip(), title))
    return sections


class _HTMLText:
    """An lxml parser target (libxml2's HTML parser: linear, lenient): text under headings.
    The standard library's ``html.parser`` is quadratic on some markup (320 KB of ``<a<a<a``
    took 90 s, and 10 MiB would take days)."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "section", "article", "table", "ul", "ol", "pre", "hr"}
    )
    _HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self._title, self._buf, self._heading = "", [], []  # type: tuple[str, list[str], list[str]]
        self._skip = 0
        self._in_heading = False

    def _flush(self) -> None:
        text = re.sub(r"[ \t]+", " ", "".join(self._buf))
        text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
        if text:
            self.sections.append(Section(text, self._title))
        self._buf = []

    def start(self, tag: str, attrib: Any) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._HEADINGS:
            self._flush()
            self._in_heading, self._heading = True, []
        elif tag in self._BLOCK:
            self._buf.append("\n")

    def end(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._HEADINGS and self._in_heading:
            self._in_heading = False
            self._title = " ".join("".join(self._heading).split())
        elif tag in self._BLOCK:
            self._buf.append("\n")

    def data(self, data: str) -> None:
        if self._skip:
            return
        (self._heading if self._in_heading else self._buf).append(data)

    def comment(self, text: str) -> None:
        return None

    def close(self) -> list[Section]:
        self._flush()
        return self.sections


def _html(text: str, budget: _Budget) -> list[Section]:
    from lxml import etree

    target = _HTMLText()
    parser = etree.HTMLParser(target=target, recover=True, no_network=True, remove_pis=True)
    for start in range(0, len(text), _HTML_FEED):  # the deadline is checked between pieces
        parser.feed(text[start : start + _HTML_FEED])
        budget.check_time()
    with contextlib.suppress(etree.LxmlError):  # nothing to parse: an empty document
        parser.close()  # calls target.close()
    return target.close()  # flushing again is harmless


def _pdf(data: bytes, budget: _Budget) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if len(reader.pages) > MAX_PDF_PAGES:
            raise ParseError(f"the PDF has more than {MAX_PDF_PAGES:,} pages")
        pages = [budget.take(page.extract_text() or "") for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ParseError(f"not a readable PDF: {exc}") from exc
    return [Section(t.strip(), "", i + 1) for i, t in enumerate(pages) if t.strip()]


def _check_unzipped(data: bytes, kind: str) -> None:
    """Refuse a zip (.docx, .xlsx) that expands past MAX_UNZIPPED_BYTES before anything
    parses it: its XML would be held in memory whole (a 345 KB .docx took 1.7 GB)."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            size = sum(item.file_size for item in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise ParseError(f"not a readable .{kind} file: {exc}") from exc
    if size > MAX_UNZIPPED_BYTES:
        raise ParseError(f"the .{kind} file expands to more than {MAX_UNZIPPED_BYTES // 2**20} MiB")


def _docx(data: bytes, budget: _Budget) -> list[Section]:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    _check_unzipped(data, "docx")
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ParseError(f"not a readable .docx file: {exc}") from exc
    sections: list[Section] = []
    title, buf = "", list[str]()
    for para in document.paragraphs:
        text = budget.take(para.text.strip())
        style = (para.style.name if para.style is not None else "") or ""
        if style.lower().startswith(("heading", "title")) and text:
            if buf:
                sections.append(Section("\n".join(buf), title))
            title, buf = text, []
        elif text:
            buf.append(text)
    for table in document.tables:
        for row in table.rows:
            cells = [budget.take(c.text.strip()) for c in row.cells]
            if any(cells):
                buf.append(" | ".join(cells))
    if buf:
        sections.append(Section("\n".join(buf), title))
    return sections


def parse_document(name: str, data: bytes) -> list[Section]:
    """Sections of an unstructured document. Raises ParseError (unknown type, unreadable)."""
    kind = file_type(name)
    budget = _Budget()
    if kind == "pdf":
        sections = _pdf(data, budget)
    elif kind == "docx":
        sections = _docx(data, budget)
    elif kind == "html":
        sections = _html(budget.take(_decode(data)), budget)
    elif kind == "md":
        sections = _markdown(budget.take(_decode(data)))
    elif kind == "txt":
        text = budget.take(_decode(data)).strip()
        sections = [Section(text)] if text else []
    else:
        raise ParseError(
            f"unsupported file type {kind!r} for an unstructured base "
            f"(use {', '.join(sorted(UNSTRUCTURED_TYPES))})"
        )
    if not sections:
        raise ParseError("the document has no text")
    return sections


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _table(header: list[Any], body: list[list[Any]]) -> Table:
    columns = [_cell(h) for h in header]
    if not any(columns):
        raise ParseError("the table has no header row")
    if len(columns) > MAX_COLUMNS:
        raise ParseError(f"the table has more than {MAX_COLUMNS} columns")
    seen: set[str] = set()
    for i, c in enumerate(columns):
        if not c:
            columns[i] = c = f"column_{i + 1}"
        if c in seen:
            raise ParseError(f"duplicate column {c!r}")
        seen.add(c)
    if len(body) > MAX_ROWS:
        raise ParseError(f"the table has more than {MAX_ROWS:,} rows")
    if len(body) * len(columns) > MAX_CELLS:
        raise ParseError(f"the table has more than {MAX_CELLS:,} cells (rows x columns)")
    table = Table(columns)
    for raw in body:
        row = {c: _cell(raw[i]) if i < len(raw) else "" for i, c in enumerate(columns)}
        if any(row.values()):
            table.rows.append(row)
    if not table.rows:
        raise ParseError("the table has no rows")
    return table


def _used_width(row: Sequence[Any]) -> int:
    for i in range(len(row) - 1, -1, -1):
        if row[i] is not None:
            return i + 1
    return 0


def _first_rows(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """The header and up to MAX_ROWS rows, plus one more to tell that there are too many."""
    return [list(r) for r in itertools.islice(rows, MAX_ROWS + 2)]


def parse_table(name: str, data: bytes) -> Table:
    """Header and rows of a ``.csv`` or ``.xlsx`` file. Raises ParseError."""
    kind = file_type(name)
    if kind == "csv":
        text = _decode(data)
        try:
            dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        try:
            rows = _first_rows(csv.reader(io.StringIO(text), dialect))
        except csv.Error as exc:
            raise ParseError(f"not a readable CSV file: {exc}") from exc
    elif kind == "xlsx":
        import zipfile

        import openpyxl
        from openpyxl.utils.exceptions import InvalidFileException

        _check_unzipped(data, "xlsx")
        try:
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ParseError(f"not a readable .xlsx file: {exc}") from exc
        try:
            sheet = book.worksheets[0]
            # a sheet's declared size can be a lie (A1:XFD1048576 in a 2 KB file): each row
            # read is padded to it, so read one column past the limit, and rows up to it
            rows = _first_rows(sheet.iter_rows(values_only=True, max_col=MAX_COLUMNS + 1))
        finally:
            book.close()
        width = max((_used_width(r) for r in rows), default=0)  # the padding's Nones dropped
        rows = [r[:width] for r in rows]
    else:
        raise ParseError(f"unsupported file type {kind!r} for a structured base (use csv, xlsx)")
    if not rows:
        raise ParseError("the table is empty")
    return _table(rows[0], rows[1:])
