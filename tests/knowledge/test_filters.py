from __future__ import annotations

import pytest

from flowhost.exceptions import InvalidInput
from flowhost.knowledge.filters import (
    RagOptions,
    StoreFilter,
    meta_label,
    normalize_value,
    parse_rag_options,
    tag_label,
)


def test_rag_options_take_the_seed_shapes() -> None:
    opts = parse_rag_options(
        {"pipeline_ids": ["p1"], "metadata_filter": {"name": "张三"}, "tags": "手机", "x": 1}
    )
    assert opts is not None
    assert opts.tags == ["手机"]
    assert opts.metadata_filter == {"name": "张三"}
    assert parse_rag_options({"structured_filter": {"price": "2999"}}) == RagOptions(
        structured_filter={"price": "2999"}
    )
    assert parse_rag_options(None) is None


@pytest.mark.parametrize(
    "bad", [{"pipeline_ids": 3}, {"metadata_filter": {"a": [1]}}, {"tags": {"a": 1}}, "x"]
)
def test_bad_rag_options_are_invalid_input(bad: object) -> None:
    with pytest.raises(InvalidInput, match="rag_options"):
        parse_rag_options(bad)  # type: ignore[arg-type]


def test_values_compare_in_normal_form() -> None:
    assert normalize_value(2999) == normalize_value(2999.0) == normalize_value("2999") == "2999"
    assert normalize_value(True) == "true"
    assert normalize_value(None) == "null"
    assert normalize_value(" a ") == " a "
    assert meta_label("k", 1) == meta_label("k", "1") != meta_label("k", "1 ")
    with pytest.raises(InvalidInput):
        normalize_value([1])


def test_lance_expression_holds_only_ids_and_digests() -> None:
    tag = tag_label("' OR 1=1 --")
    flt = StoreFilter(("kb1", "kb-2"), ("file_1",), (tag,), (meta_label("k", "v\\'\n"),))
    sql = flt.to_lance()
    assert sql.startswith("pipeline_id IN ('kb1', 'kb-2') AND file_id IN ('file_1')")
    assert f"array_has_any(labels, ['{tag}'])" in sql
    assert "OR 1=1" not in sql


def test_milvus_binds_values() -> None:
    flt = StoreFilter(("kb1",), None, None, (meta_label("k", "v"),))
    expr, params = flt.to_milvus(bind=True)
    assert expr == "pipeline_id in {pids} and ARRAY_CONTAINS_ALL(labels, {alll})"
    assert params["pids"] == ["kb1"]
    expr, params = flt.to_milvus(bind=False)
    assert expr.startswith('pipeline_id in ["kb1"]')
    assert params == {}


@pytest.mark.parametrize("bad", ["a'b", "x y", "", "a" * 65, "é"])
def test_store_filter_refuses_unchecked_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid id"):
        StoreFilter(("ok",), (bad,))
    with pytest.raises(ValueError, match="invalid label"):
        StoreFilter(("ok",), None, ("' or 1=1",))
