"""One frozen Settings object, built at the edge (CLI flags > FLOWHOST_* env > defaults)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


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
    node_timeout: float = Field(600.0, gt=0)
    data_dir: Path = Path(".flowhost")
    database_url: SecretStr | None = None
    service_name: str | None = None
    history: bool = True
    history_turns: int = Field(20, ge=0)
    log_level: str = "info"
    access_log: bool = False
    graceful_timeout: float = Field(30.0, ge=0)

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None
