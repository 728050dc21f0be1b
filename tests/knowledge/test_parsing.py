from __future__ import annotations

import io
import itertools
import re

import pytest
from kbdocs import fixture_bytes, make_docx, make_pdf, make_xlsx

from flowhost.knowledge.chunking import chunk_sections, split_sentences
from flowhost.knowledge.parsing import ParseError, Section, parse_document, parse_table


def test_sentences_split_on_chinese_and_english_punctuation() -> None:
    text = "百炼手机价格为2999元。它有6GB内存！真的吗？Yes. It costs 3.5 dollars! Really?"
    assert split_sentences(text) == [
        "百炼手机价格为2999元。",
        "它有6GB内存！",
        "真的吗？",
        "Yes.",
        "It costs 3.5 dollars!",
        "Really?",
    ]


def test_chunks_respect_size_and_overlap() -> None:
    text = "第一句话很长很长。" * 40 + "\n\n" + "English sentence one. Sentence two is here. " * 20
    pieces = chunk_sections([Section(text, "T")], size=100, overlap=30)
    assert all(len(p.text) <= 100 for p in pieces)
    assert len(pieces) > 5
    # overlap: each chunk starts with the previous one's last sentence(s)
    for a, b in itertools.pairwise(pieces):
        assert b.text.split("。")[0] in a.text or b.text.split(". ")[0] in a.text
    with pytest.raises(ValueError, match="overlap"):
        chunk_sections([Section("x")], size=10, overlap=10)


def test_long_sentence_is_cut() -> None:
    pieces = chunk_sections([Section("字" * 250)], size=100, overlap=0)
    assert [len(p.text) for p in pieces] == [100, 100, 50]


def test_markdown_headings_become_titles() -> None:
    sections = parse_document("guide_zh.md", fixture_bytes("guide_zh.md"))
    assert [s.title for s in sections] == ["极光电水壶的安装", "清洁与保养"]


def test_html_drops_scripts_and_styles() -> None:
    sections = parse_document("faq_zh.html", fixture_bytes("faq_zh.html"))
    text = " ".join(s.text for s in sections)
    assert "保修两年" in text
    assert "alert" not in text
    assert "color" not in text
    assert "退货政策" in [s.title for s in sections]


def test_pdf_pages() -> None:
    sections = parse_document("a.pdf", make_pdf(["The Aurora kettle boils water.", "Page one."]))
    assert sections[0].page == 1
    assert "Aurora kettle" in sections[0].text


def test_docx_headings_and_text() -> None:
    data = make_docx("保修", ["极光电水壶保修两年。", "Keep the receipt."])
    sections = parse_document("a.docx", data)
    assert sections[0].title == "保修"
    assert "Keep the receipt." in sections[0].text


def test_gb18030_text() -> None:
    assert parse_document("a.txt", "你好世界".encode("gb18030"))[0].text == "你好世界"


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("corrupt.pdf", fixture_bytes("corrupt.pdf"), "PDF"),
        ("a.docx", b"not a zip", "docx"),
        ("a.exe", b"MZ", "unsupported"),
        ("empty.txt", b"   ", "no text"),
    ],
)
def test_unreadable_files_raise_parse_error(name: str, data: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_document(name, data)


def test_csv_and_xlsx_tables() -> None:
    table = parse_table("phones.csv", fixture_bytes("phones.csv"))
    assert table.columns == ["model", "price", "brand", "color"]
    assert table.rows[0] == {"model": "百炼手机", "price": "2999", "brand": "百炼", "color": "黑色"}
    xlsx = parse_table("p.xlsx", make_xlsx([["model", "price"], ["A", 2999], ["B", 10.5]]))
    assert xlsx.rows == [{"model": "A", "price": "2999"}, {"model": "B", "price": "10.5"}]
    with pytest.raises(ParseError, match="duplicate"):
        parse_table("d.csv", b"a,a\n1,2\n")


# --- what a small hostile file cannot do (each would take minutes or gigabytes unbounded) ------


def test_a_long_heading_line_is_read_in_linear_time() -> None:
    # the old heading pattern was cubic: 3,000 spaces took 45 s
    text = "# a" + " " * 50_000 + "b ##\nbody\n## Title ##\nmore"
    sections = parse_document("h.md", text.encode())
    assert [(s.title, s.text) for s in sections] == [("a" + " " * 50_000 + "b", "body"),
                                                   ("Title", "more")]  # fmt: skip


def test_a_long_run_of_dots_is_split_in_linear_time() -> None:
    # the old sentence pattern was quadratic in a run of terminators: 40 KB took 30 s
    dots = "." * 200_000
    assert split_sentences(dots + "x") == [dots + "x"]
    assert split_sentences("Wait... what?! Yes. 3.14 is pi") == [
        "Wait...",
        "what?!",
        "Yes.",
        "3.14 is pi",
    ]


def test_an_xlsx_that_declares_a_huge_sheet_is_read_by_its_cells() -> None:
    import zipfile

    data = make_xlsx([["model", "price"], ["A", 2999]])
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as patched:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                content = re.sub(
                    rb'<dimension ref="[^"]*"', b'<dimension ref="A1:XFD8000"', content
                )
            patched.writestr(item, content)
    table = parse_table("wide.xlsx", out.getvalue())  # rows were padded to 16,384 columns
    assert table.columns == ["model", "price"]
    assert table.rows == [{"model": "A", "price": "2999"}]


def test_tables_have_a_row_and_a_cell_limit() -> None:
    wide = ",".join(f"c{i}" for i in range(128)) + "\n" + "1\n" * 20_000
    with pytest.raises(ParseError, match="more than 2,000,000 cells"):
        parse_table("wide.csv", wide.encode())
    with pytest.raises(ParseError, match="more than 100,000 rows"):
        parse_table("long.csv", ("a\n" + "1\n" * 100_001).encode())
    assert len(parse_table("ok.csv", ("a\n" + "1\n" * 100_000).encode()).rows) == 100_000


def test_documents_have_a_text_and_a_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowhost.knowledge import parsing

    monkeypatch.setattr(parsing, "MAX_TEXT_CHARS", 1_000)  # a .docx is a zip: text can explode
    with pytest.raises(ParseError, match="more than 1,000 characters of text"):
        parse_document("big.docx", make_docx("T", ["x" * 600, "y" * 600]))
    assert parse_document("ok.docx", make_docx("T", ["x" * 600]))[0].text == "x" * 600
    monkeypatch.undo()
    monkeypatch.setattr(parsing, "PARSE_SECONDS", 0.0)
    with pytest.raises(ParseError, match="took longer than 0 s"):
        parse_document("slow.html", b"<p>" + b"<a" * 40_000)


def test_a_zip_that_expands_too_far_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowhost.knowledge import parsing

    monkeypatch.setattr(parsing, "MAX_UNZIPPED_BYTES", 2**20)
    bomb = make_docx("T", ["x" * 2**20])  # compresses to a few KB
    assert len(bomb) < 2**16
    with pytest.raises(ParseError, match="expands to more than 1 MiB"):
        parse_document("bomb.docx", bomb)
    with pytest.raises(ParseError, match="expands to more than 1 MiB"):
        parse_table("bomb.xlsx", make_xlsx([["a"]] + [[f"{i}" + "x" * 30_000] for i in range(40)]))
    with pytest.raises(ParseError, match=r"not a readable \.docx"):
        parse_document("junk.docx", b"not a zip")


def test_html_is_read_in_linear_time() -> None:
    # html.parser (the standard library's) took 90 s for 320 KB of "<a<a<a..."; 4 MB here
    sections = parse_document("a.html", b"<h1>T</h1><p>kept</p>" + b"<a" * 2_000_000)
    assert [(s.title, s.text) for s in sections] == [("T", "kept")]
