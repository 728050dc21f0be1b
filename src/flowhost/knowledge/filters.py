"""``rag_options``: the per-request retrieval filters, and their compilation per vector store.

The wire shape is Bailian's (``parameters.rag_options``)::

    {"pipeline_ids": ["kb1"], "file_ids": ["file_..."], "tags": ["手机"] | "手机",
     "metadata_filter": {"name": "张三"}, "structured_filter": {"price": "2999"}}

Semantics (the seed's):

- ``pipeline_ids``: only these knowledge bases are searched, *replacing* the app's own.
- ``file_ids``: effective only together with ``pipeline_ids``: a file id counts when its base
  is among the request's ``pipeline_ids``; then only those files are searched.
- ``tags``: documents carrying at least one of the tags.
- ``metadata_filter``: documents whose metadata has every key with exactly that value.
- ``structured_filter``: structured rows whose columns have every key with exactly that value.

Values never reach a filter expression as text. Tags, metadata pairs and structured cells are
stored as *labels*: 32-hex digests of ``["t", tag]``, ``["m", key, value]``, ``["s", column,
value]``; a filter is compiled to the digests of what it asks for. Ids are checked against the
SQL catalogue before they are used. What remains (hex digests and checked ids) is still bound
(Milvus ``filter_params``) or escaped by the backend's builder (LanceDB ``lit(...).to_sql()``).
An injection string therefore matches exactly the rows that literally carry that string.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowhost.exceptions import InvalidInput

__all__ = [
    "ID_RULE",
    "MAX_FILTER_VALUES",
    "RagOptions",
    "StoreFilter",
    "label",
    "meta_label",
    "normalize_value",
    "parse_rag_options",
    "structured_label",
    "tag_label",
]

ID_RULE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_FILTER_VALUES = 1000
Scalar = str | int | float | bool | None


class RagOptions(BaseModel):
    """Bailian's ``rag_options`` (``parameters.rag_options``), with its exact field names."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pipeline_ids: list[str] | None = Field(
        None, description="search only these knowledge bases (replaces the app's own)"
    )
    file_ids: list[str] | None = Field(
        None, description="search only these documents; effective with their bases' pipeline_ids"
    )
    tags: list[str] | None = Field(None, description="documents carrying any of these tags")
    metadata_filter: dict[str, Scalar] | None = Field(
        None, description="document metadata key = value (all must match)"
    )
    structured_filter: dict[str, Scalar] | None = Field(
        None, description="structured-row column = value (all must match)"
    )

    @field_validator("pipeline_ids", "file_ids", "tags", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        # The seed's curl example sends "tags": "手机"; a comma string is a list too.
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        return value

    @field_validator("pipeline_ids", "file_ids", "tags")
    @classmethod
    def _bounded(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) > MAX_FILTER_VALUES:
            raise ValueError(f"at most {MAX_FILTER_VALUES} values")
        return value

    @field_validator("metadata_filter", "structured_filter")
    @classmethod
    def _bounded_map(cls, value: dict[str, Scalar] | None) -> dict[str, Scalar] | None:
        if value is not None and len(value) > 64:
            raise ValueError("at most 64 keys")
        return value

    def is_empty(self) -> bool:
        return not (
            self.pipeline_ids
            or self.file_ids
            or self.tags
            or self.metadata_filter
            or self.structured_filter
        )


def parse_rag_options(value: RagOptions | Mapping[str, Any] | None) -> RagOptions | None:
    """A ``RagOptions`` from an instance, a dict (the wire) or None. Raises InvalidInput."""
    if value is None or isinstance(value, RagOptions):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput("rag_options must be an object", field="rag_options")
    try:
        return RagOptions.model_validate(dict(value))
    except ValueError as exc:  # pydantic.ValidationError
        errors: list[Any] = list(getattr(exc, "errors", list)())
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        msg = errors[0]["msg"] if errors else str(exc)
        raise InvalidInput(
            f"rag_options.{where}: {msg}" if where else f"rag_options: {msg}",
            field=f"rag_options.{where}" if where else "rag_options",
        ) from None


def normalize_value(value: Any) -> str:
    """The string form a stored or requested value is compared in.

    Strings are kept exactly (no trimming, no case folding); integral numbers lose their
    fraction (``2999``, ``2999.0`` and ``"2999"`` are equal); booleans are ``true``/``false``;
    None is ``null``. Lists and objects are refused.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
            return str(int(value))
        return repr(value)
    raise InvalidInput(f"filter and metadata values must be scalars, not {type(value).__name__}")


def label(*parts: str) -> str:
    """The 32-hex digest stored for one tag / metadata pair / structured cell."""
    raw = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(raw.encode("utf-8"), digest_size=16).hexdigest()


def tag_label(tag: str) -> str:
    return label("t", tag)


def meta_label(key: str, value: Any) -> str:
    return label("m", key, normalize_value(value))


def structured_label(column: str, value: Any) -> str:
    return label("s", column, normalize_value(value))


_HEX = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class StoreFilter:
    """A resolved filter for one vector-store search (all parts ANDed).

    :ivar pipeline_ids: bases to search (never empty).
    :ivar file_ids: restrict to these files, or None for no file restriction.
    :ivar any_labels: rows carrying at least one of these labels (tags), or None.
    :ivar all_labels: rows carrying every one of these labels (metadata / structured), or None.
    """

    pipeline_ids: tuple[str, ...]
    file_ids: tuple[str, ...] | None = None
    any_labels: tuple[str, ...] | None = None
    all_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Defence in depth: only checked ids and hex digests may reach a compiler.
        if not self.pipeline_ids:
            raise ValueError("a store filter needs at least one pipeline id")
        for ident in (*self.pipeline_ids, *(self.file_ids or ())):
            if not ID_RULE.match(ident):
                raise ValueError(f"invalid id {ident!r}")
        for lab in (*(self.any_labels or ()), *(self.all_labels or ())):
            if not _HEX.match(lab):
                raise ValueError(f"invalid label {lab!r}")

    @property
    def is_scoped(self) -> bool:
        """True when anything narrows the bases (files or labels): search exactly."""
        return bool(self.file_ids or self.any_labels or self.all_labels)

    def matches_nothing(self) -> bool:
        return self.file_ids == () or self.any_labels == ()

    def to_lance(self) -> str:
        """LanceDB SQL ``where``: fixed column names, literals rendered by LanceDB's builder."""
        from lancedb.expr import lit

        def lits(values: Iterable[str]) -> str:
            return ", ".join(lit(v).to_sql() for v in values)

        parts = [f"pipeline_id IN ({lits(self.pipeline_ids)})"]
        if self.file_ids is not None:
            parts.append(f"file_id IN ({lits(self.file_ids)})")
        if self.any_labels is not None:
            parts.append(f"array_has_any(labels, [{lits(self.any_labels)}])")
        if self.all_labels is not None:
            parts.append(f"array_has_all(labels, [{lits(self.all_labels)}])")
        return " AND ".join(parts)

    def to_milvus(self, *, bind: bool) -> tuple[str, dict[str, Any]]:
        """Milvus boolean expression and its ``filter_params``.

        ``bind=False`` (milvus-lite 2.5, which lacks expression templates) renders each value
        with ``json.dumps``; the values are checked ids and hex digests, so that is exact.
        """
        params: dict[str, Any] = {}

        def ref(name: str, values: list[str]) -> str:
            if bind:
                params[name] = values
                return "{" + name + "}"
            return json.dumps(values, ensure_ascii=False)

        parts = [f"pipeline_id in {ref('pids', list(self.pipeline_ids))}"]
        if self.file_ids is not None:
            parts.append(f"file_id in {ref('fids', list(self.file_ids))}")
        if self.any_labels is not None:
            parts.append(f"ARRAY_CONTAINS_ANY(labels, {ref('anyl', list(self.any_labels))})")
        if self.all_labels is not None:
            parts.append(f"ARRAY_CONTAINS_ALL(labels, {ref('alll', list(self.all_labels))})")
        return " and ".join(parts), params
